"""The mechanisms several integrations share, each written once here.

* :class:`HookSlot`: the atfork hook an integration holds while enabled.
* :class:`ForkStates`: what a fork's prepare phase found, kept by forking
  thread for its parent and child phases.
* :data:`LOCK_TYPES`, :data:`RLOCK_TYPES` and :func:`renew_locks`: locks
  re-created in place in the child, unless the forking thread owns them.
* :class:`Versioned`: a dict, and a copy of it made at most once per
  change, without a lock.
* :func:`ref_or_strong`: a weak reference where the type allows one, a
  strong one otherwise.
* :func:`keep_forever`: an object whose finaliser must never run in the
  child.
* :class:`Subclasses`: a subclass per class, that objects are switched to
  in place.
* :func:`check_callback`: a callback that can never run, refused when it is
  given.

Integrations use the core through its public API only, as a third-party one
would. The core keeps its own copies of two of these on its hot path: the
dispatcher's forks in progress by thread (``atfork._dispatch._forks``) and
the registry's version-and-snapshot loop (``atfork._registry``); the core
may not import this module, which would import ``atfork.integrations``.
"""

from __future__ import annotations

import atexit
import inspect
import sysconfig
import threading
import weakref
from _thread import get_ident
from collections.abc import Iterable
from typing import Any, Callable, Generic, TypeVar

import atfork

__all__ = [
    "FREE_THREADED",
    "LOCK",
    "LOCK_TYPES",
    "RLOCKS",
    "RLOCK_TYPES",
    "ForkStates",
    "HookSlot",
    "Subclasses",
    "Versioned",
    "check_callback",
    "keep_forever",
    "prepare_keep_forever",
    "ref_or_strong",
    "renew_locks",
]

K = TypeVar("K")
V = TypeVar("V")
S = TypeVar("S")
T = TypeVar("T")

Callback = Callable[[], object]

#: The free-threaded build (3.13t, 3.14t): no GIL.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


# -- the hook of an integration -------------------------------------------------


class HookSlot:
    """The atfork hook an integration registers while it is enabled.

    :meth:`register` registers one unless the slot holds one that is still
    :attr:`active` (one unregistered by other means, a test's clean-up say,
    is registered anew); :meth:`release` unregisters it.
    """

    __slots__ = ("_hook",)

    def __init__(self) -> None:
        self._hook: atfork.Hook | None = None

    def register(
        self,
        prepare: Callback | None = None,
        parent: Callback | None = None,
        child: Callback | None = None,
        *,
        priority: int,
        name: str,
    ) -> None:
        """Register the hook, unless it is registered."""
        hook = self._hook
        if hook is None or not hook.active:
            self._hook = atfork.atfork(prepare, parent, child, priority=priority, name=name)

    def release(self) -> None:
        """Unregister the hook, if it is registered."""
        hook = self._hook
        if hook is not None:
            self._hook = None
            hook.unregister()

    @property
    def active(self) -> bool:
        """Whether the slot holds a registered hook."""
        hook = self._hook
        return hook is not None and hook.active


# -- from prepare to parent and child -------------------------------------------


class ForkStates(dict[int, T]):
    """What the prepare phase of each fork in progress found, by forking
    thread: two threads may fork at once.

    Prepare stores its state under ``_thread.get_ident()``, and the parent
    pops it (``states.pop(get_ident(), None)``); both are written out there
    as dict operations, not calls here: every object a parent phase touches
    (a function called is one) is a page it writes at each fork, which the
    kernel copies. The child calls :meth:`take_in_child`, which also drops
    the forks of the other threads, cut short (those threads are not in
    the child).
    """

    __slots__ = ()

    def take_in_child(self, default: T | None = None) -> T | None:
        """In the child: the state of the fork that made it, and no other."""
        state = self.pop(get_ident(), default)
        if self:
            self.clear()
        return state


# -- locks ------------------------------------------------------------------------

LOCK: type = type(threading.Lock())
RLOCKS: tuple[type, ...] = tuple(
    {type(threading.RLock()), getattr(threading, "_PyRLock", type(threading.RLock()))}
)
#: The lock types whose ``_at_fork_reinit()`` the child may call.
LOCK_TYPES: frozenset[type] = frozenset({LOCK, *RLOCKS})
#: Those that record their owner (``_is_owned()``).
RLOCK_TYPES: frozenset[type] = frozenset(RLOCKS)


def renew_locks(values: Iterable[Any], queue_type: type | None = None) -> None:
    """In the child: re-create in place each lock among ``values``, in the
    conditions among them, and, one level down, in the queues among them
    (instances of ``queue_type``); the conditions forget their waiters
    (threads of the parent). ``_at_fork_reinit()`` takes no lock.

    An ``RLock`` the forking thread owns is kept, so that the thread can
    release it in the child; a plain ``Lock`` records no owner and is always
    re-created, as the standard library does with handler locks.
    """
    for value in values:
        kind = type(value)
        if kind in LOCK_TYPES:
            if kind not in RLOCK_TYPES or not value._is_owned():
                value._at_fork_reinit()
        elif isinstance(value, threading.Condition):
            lock = vars(value).get("_lock")
            if type(lock) in LOCK_TYPES:
                renew_locks((lock,))
            vars(value)["_waiters"].clear()
        elif queue_type is not None and isinstance(value, queue_type):
            renew_locks(tuple(vars(value).values()))


# -- a dict and its copy -----------------------------------------------------------


class Versioned(Generic[K, V, S]):
    """A dict, :attr:`entries`, and a copy of it made at most once per
    change, with no lock: nothing can be held across a fork, and a weak
    reference callback run by the garbage collector in the middle of a
    change cannot deadlock. Nothing relies on the GIL.

    Each change of :attr:`entries` is one dict operation followed by
    :meth:`changed`: a new version, a fresh object. :meth:`copy` returns
    the copy when it is tagged with the current version, and makes it
    again otherwise; the tag is the version read *before* the copy, so a
    change the copy missed stores its version after that read and the tag
    no longer matches; versions are never reused, so a stale tag cannot
    match again. ``view`` (``dict.values``, ``dict.items``) says what the
    copy holds.
    """

    __slots__ = ("_taken", "_version", "_view", "entries")

    def __init__(self, view: Callable[[dict[K, V]], Iterable[S]]) -> None:
        self.entries: dict[K, V] = {}
        self._view = view
        self._version = object()
        #: (the version it was made from, the copy).
        self._taken: tuple[object, tuple[S, ...]] = (None, ())

    def changed(self) -> None:
        self._version = object()

    def copy(self) -> tuple[S, ...]:
        version, taken = self._taken
        if version is not self._version:
            version = self._version  # before the copy
            taken = tuple(self._view(self.entries.copy()))
            self._taken = (version, taken)
        return taken


# -- references ---------------------------------------------------------------------


def ref_or_strong(obj: object, callback: Callable[[Any], object]) -> Callable[[], Any]:
    """A weak reference to ``obj`` that calls ``callback`` when it dies, or,
    for an object that cannot be weakly referenced (numpy generators,
    sqlite3 connections), a strong one, dereferenced the same way."""
    try:
        return weakref.ref(obj, callback)
    except TypeError:
        return _Strong(obj)


class _Strong:
    __slots__ = ("_obj",)

    def __init__(self, obj: object) -> None:
        self._obj = obj

    def __call__(self) -> object:
        return self._obj


# -- never finalising an object -----------------------------------------------------

_incref: Callable[[object], None] | None = None
# The objects kept in this process, alive until it ends.
_kept: list[object] = []


def prepare_keep_forever() -> None:
    """Make :func:`keep_forever` ready; called in the parent (importing
    ctypes in a child at fork time would cost milliseconds)."""
    global _incref
    if _incref is None:
        try:
            import ctypes

            incref = ctypes.PYFUNCTYPE(None, ctypes.py_object)(("Py_IncRef", ctypes.pythonapi))
        except (ImportError, AttributeError, OSError):  # pragma: no cover  (CPython has them)
            return
        _incref = incref


def keep_forever(obj: object) -> None:
    """Keep ``obj`` alive until the process ends, so that it is never
    finalised: finalising an inherited stream would flush it (repeating the
    parent's pending output, or hanging on its lock) and close it; an
    inherited connection's finaliser may reach the parent's session.

    Until interpreter exit a reference from this module keeps it. Exit
    clears modules and collects what they held, so at exit (an
    :mod:`atexit` function, which runs before that) one reference to each is
    leaked, once :func:`prepare_keep_forever` ran: the objects outlive the
    interpreter's teardown, and the process ends without finalising them. A
    process that ends with ``os._exit`` finalises nothing anyway.
    """
    _kept.append(obj)


def _leak_kept() -> None:
    if _incref is not None:
        for obj in _kept:
            _incref(obj)


atexit.register(_leak_kept)


# -- switching an object's class --------------------------------------------------


class Subclasses:
    """A subclass per class, that objects are switched to in place
    (``obj.__class__ = subclass``) and back.

    Each is made once (two threads making one at once keep the same), adds
    no slot, so that ``__class__`` assignment accepts it, and has the
    module of its class; its name and qualified name are those of its class
    after ``prefix``: with none, the object's ``repr`` is unchanged (and
    ``isinstance`` is, for a subclass).
    """

    __slots__ = ("_made", "_prefix")

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        # class -> its subclass; a subclass -> itself.
        self._made: dict[type, type] = {}

    def get(self, cls: type) -> type | None:
        """The subclass of ``cls`` (``cls`` itself for one), if made."""
        return self._made.get(cls)

    def make(self, cls: type, namespace: dict[str, Any]) -> type:
        """The subclass of ``cls``, made with ``namespace`` unless made."""
        made = self._made.get(cls)
        if made is None:
            prefix = self._prefix
            made = type(cls)(
                prefix + cls.__name__,
                (cls,),
                {
                    "__slots__": (),
                    "__module__": cls.__module__,
                    "__qualname__": prefix + cls.__qualname__,
                    **namespace,
                },
            )
            made = self._made.setdefault(cls, made)
            self._made.setdefault(made, made)
        return made

    def switch(self, obj: object, namespace: dict[str, Any]) -> None:
        """Switch ``obj`` to the subclass of its class."""
        obj.__class__ = self.make(type(obj), namespace)

    def restore(self, obj: object) -> None:
        """Give ``obj`` its class back, if it was switched."""
        cls = type(obj)
        if self._made.get(cls) is cls:
            obj.__class__ = cls.__mro__[1]


# -- callbacks -----------------------------------------------------------------------


def check_callback(func: Callable[..., object], what: str, nargs: int) -> None:
    """Refuse ``func``, known to be callable, if it cannot run when called
    with ``nargs`` positional arguments: it takes other arguments, or
    calling it only makes a coroutine or a generator. A callable whose
    signature :mod:`inspect` cannot read is accepted. (:func:`atfork.atfork`
    checks its own callbacks the same way.)

    :raises TypeError: saying why, naming ``func`` by ``what``.
    """
    for candidate in (func, getattr(type(func), "__call__", None)):  # noqa: B004  (the method)
        if inspect.iscoroutinefunction(candidate) or inspect.isasyncgenfunction(candidate):
            raise TypeError(
                f"{what} must run when called, and {func!r} is an async function: "
                "calling it only makes a coroutine or an async generator"
            )
        if inspect.isgeneratorfunction(candidate):
            raise TypeError(
                f"{what} must run when called, and {func!r} is a generator function: "
                "calling it only makes a generator"
            )
    try:
        # Not through __wrapped__: a decorator's wrapper may take other
        # arguments than the function it wraps.
        bind = inspect.signature(func, follow_wrapped=False).bind
    except (TypeError, ValueError):  # no signature to read: accepted
        return
    try:
        bind(*(None,) * nargs)
    except TypeError as exc:
        arguments = {0: "no arguments", 1: "one argument"}.get(nargs, f"{nargs} arguments")
        raise TypeError(
            f"{what} is called with {arguments}, and {func!r} cannot be: {exc}"
        ) from None
