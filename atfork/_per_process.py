"""Objects that belong to one process: :func:`per_process`.

One child hook serves every :class:`ProcessLocal`: it replaces the process
token, a fresh object, in each forked child. Each instance holds its object
in a :class:`_Held` beside the token of the process that made it, one
reference read and written as a whole, so :meth:`ProcessLocal.get` is one
identity compare when the object is this process's, and a thread never sees
a token paired with another process's object (free-threaded builds
included).

Creation is serialised per instance and per process: a lock of the
instance, made afresh for each process token under a short module lock
that the child hook re-makes. No lock of this module is ever copied held
into a child and then taken: the module lock is never held across user
code, and the child makes new instance locks. Nothing is created at fork
time: the child hook only swaps the token, and the first ``get()`` in the
child makes the child's object.

An inherited object (one with an older token) is kept alive for good in the
child: releasing it there would run its finaliser on resources that are the
parent's (a socket's goodbye, a buffer flushed twice), and would write to
pages the parent shares.
"""

from __future__ import annotations

import threading
from _thread import get_ident
from typing import Callable, Generic, TypeVar

from atfork._refs import check_callback
from atfork._registry import Hook, atfork

__all__ = ["ProcessLocal", "per_process"]

T = TypeVar("T")

#: The priority of the token hook: above every integration's, so that any
#: other child callback may already use per-process objects.
PRIORITY = 1 << 30


class _Token:
    """Stands for one process: identity is all it has."""

    __slots__ = ()


class _Process:
    """What this module holds per process, in slots: the child hook writes
    them without taking a lock (on a free-threaded build, a dict another
    thread of the parent was writing at the fork may stay locked for good
    in the child, and a module's globals are a dict)."""

    __slots__ = ("hook", "kept", "lock", "token")

    def __init__(self) -> None:
        #: This process's token, replaced in each child.
        self.token = _Token()
        #: Guards the instance locks and the registration of the hook;
        #: never held while user code runs, re-made in the child.
        self.lock = threading.Lock()
        self.hook: Hook | None = None
        #: Objects inherited from an ancestor, kept alive (see the module
        #: docstring); a child starts a list of its own that holds the
        #: parent's, never appending to a list a parent thread may have
        #: been changing.
        self.kept: list[object] = []


_process = _Process()


def _new_process() -> None:
    _process.lock = threading.Lock()
    _process.kept = [_process.kept]
    _process.token = _Token()


def _ensure_hook() -> None:
    """Register the token hook, or register it again if it was
    unregistered (it is listed by :func:`atfork.hooks`)."""
    hook = _process.hook
    if hook is not None and hook.active:
        return
    with _process.lock:
        hook = _process.hook
        if hook is None or not hook.active:
            _process.hook = atfork(child=_new_process, priority=PRIORITY, name="atfork.per_process")


class _Held:
    """An object and the token of the process that made it (None: none)."""

    __slots__ = ("token", "value")

    def __init__(self, token: _Token | None, value: object) -> None:
        self.token = token
        self.value = value


class _Guard:
    """The creation lock of one instance in one process, and the thread
    creating (to refuse a factory that asks for its own object)."""

    __slots__ = ("lock", "owner", "token")

    def __init__(self, token: _Token) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.owner = 0


_ABSENT = object()
_NOTHING = _Held(None, _ABSENT)
_NO_GUARD = _Guard(_Token())


class ProcessLocal(Generic[T]):
    """An object that belongs to one process, made by :func:`per_process`.

    In each process, the first :meth:`get` calls the factory; later calls
    return the same object. A forked child never sees its parent's object
    through :meth:`get` or :meth:`peek`: its first :meth:`get` makes one of
    its own, and the parent's copy is handed, once, to ``on_inherit``.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "_factory", "_guard", "_held", "_on_inherit")
    __module__ = "atfork"

    _factory: Callable[[], T]
    _on_inherit: Callable[[T], object] | None
    _held: _Held
    _guard: _Guard

    def __init__(self) -> None:
        raise TypeError("ProcessLocal objects are made by atfork.per_process()")

    def get(self) -> T:
        """This process's object, made by the factory on first use here.

        Two threads calling it at once in a process get one object, made
        once. In a forked child, the first call first gives the inherited
        object to ``on_inherit`` (if one was given and the parent had an
        object), then calls the factory.

        :raises: whatever the factory or ``on_inherit`` raises, to the
            caller. After the factory raised, the next call tries again;
            after ``on_inherit`` raised, it is not called again for that
            object, and the next call goes on with the factory.
        :raises RuntimeError: the factory itself called :meth:`get` of the
            same object (it would wait for itself).
        """
        held = self._held
        if held.token is _process.token:
            return held.value  # type: ignore[return-value]
        return self._create()

    __call__ = get

    def _create(self) -> T:
        # Again here, in case someone unregistered the hook (a test suite's
        # clean-up, say): from this process's next fork on it works again.
        _ensure_hook()
        token = _process.token
        guard = self._guard
        if guard.token is not token:
            with _process.lock:
                guard = self._guard
                if guard.token is not token:
                    guard = self._guard = _Guard(token)
        if guard.owner == get_ident():
            raise RuntimeError(
                f"the factory of {self!r} called its get(): it would wait for itself"
            )
        with guard.lock:
            guard.owner = get_ident()
            try:
                held = self._held
                if held.token is token:
                    return held.value  # type: ignore[return-value]
                inherited = held.value
                if inherited is not _ABSENT:
                    # Another process's object: kept alive, handed over once.
                    _process.kept.append(inherited)
                    self._held = _NOTHING
                    if self._on_inherit is not None:
                        self._on_inherit(inherited)  # type: ignore[arg-type]
                value = self._factory()
                self._held = _Held(token, value)
                return value
            finally:
                guard.owner = 0

    def peek(self) -> T | None:
        """This process's object, or None if it has none yet (nothing is
        made, and an inherited object is never returned)."""
        held = self._held
        if held.token is _process.token:
            return held.value  # type: ignore[return-value]
        return None

    def reset(self) -> T | None:
        """Drop this process's object; the next :meth:`get` makes a new one.

        :returns: the object dropped, or None if this process had none
            (then nothing changes: an inherited object still goes to
            ``on_inherit`` on the next :meth:`get`).
        :raises RuntimeError: called by the factory during its own call.

        It waits for a creation in progress in another thread, and drops
        what it made.
        """
        token = _process.token
        if self._held.token is not token:
            return None
        guard = self._guard
        if guard.owner == get_ident():
            raise RuntimeError(f"the factory of {self!r} called its reset()")
        with guard.lock:
            held = self._held
            if held.token is not token:
                return None
            self._held = _NOTHING
            return held.value  # type: ignore[return-value]

    def __repr__(self) -> str:
        state = "made" if self._held.token is _process.token else "not made"
        return f"<atfork.ProcessLocal of {_describe(self._factory)} ({state} in this process)>"


def _describe(func: object) -> str:
    name = getattr(func, "__qualname__", None)
    return name if isinstance(name, str) else repr(func)


def per_process(
    factory: Callable[[], T], *, on_inherit: Callable[[T], object] | None = None
) -> ProcessLocal[T]:
    """Declare an object that belongs to one process (a background worker,
    a client, a session, a cache).

    :param factory: called with no arguments to make the object, lazily: on
        the first :meth:`ProcessLocal.get` in each process, never at fork
        time, so it neither blocks a fork nor slows a child's start-up.
    :param on_inherit: called with one argument, the object of the parent
        (as the child's memory holds it), once, in a forked child, on its
        first :meth:`~ProcessLocal.get`, before the factory: the place to
        drop a backlog the child must not send a second time, or to forget
        the parent's connections without closing them.
    :returns: a :class:`ProcessLocal`; ``get()`` (or calling it) gives the
        object.
    :raises TypeError: ``factory`` or ``on_inherit`` is not callable, or
        can never run when called with no argument (``factory``) or one
        (``on_inherit``).

    The child never releases an inherited object (its finaliser would act
    on the parent's resources) and never touches the parent's: what the
    child does happens to its own copy of memory, and the parent's object
    goes on as before. One ``child`` hook, registered through
    :func:`atfork.atfork` on the first call, serves every instance: it
    marks the child as a new process, at a priority above the integrations'
    (any child callback may use per-process objects). In a child forked
    without Python's fork hooks (C code calling ``fork()``), call
    :func:`atfork.check` first.

    .. versionadded:: 0.1
    """
    if not callable(factory):
        raise TypeError(f"factory must be callable, not {type(factory).__name__}")
    check_callback(factory, "factory")
    if on_inherit is not None:
        if not callable(on_inherit):
            raise TypeError(f"on_inherit must be callable, not {type(on_inherit).__name__}")
        check_callback(on_inherit, "on_inherit", 1)
    _ensure_hook()
    local: ProcessLocal[T] = object.__new__(ProcessLocal)
    local._factory = factory
    local._on_inherit = on_inherit
    local._held = _NOTHING
    local._guard = _NO_GUARD
    return local
