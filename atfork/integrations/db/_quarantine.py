"""What a child quarantines, and the tools every driver family uses for it.

The registry maps ``id(obj)`` to an entry: a (weak, where the type allows)
reference to a connection, pool, engine record or client, and the function
that quarantines it in a child. Registration is a dict assignment, atomic
under the GIL, so it takes no lock and is safe from any thread. The child
pass reads a copy of the dict; it runs alone (the child has one thread).
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Iterable
from typing import Any, Callable, TypeVar

from atfork._refs import ref_or_strong

__all__ = [
    "InheritedConnectionError",
    "Neutraliser",
    "Quarantine",
    "forget_auto",
    "inherited_error",
    "is_quarantined",
    "leak",
    "original_class",
    "patch",
    "per_type",
    "prepare_leak",
    "prune",
    "quarantine_all",
    "quarantine_class",
    "register",
    "registering_init",
    "sock_quarantine",
    "swap_class",
    "track_connection",
    "tracked_count",
    "unpatch",
]


class InheritedConnectionError(RuntimeError):
    """A child used a database connection it inherited from its parent.

    The connection's socket belongs to the parent's server session: atfork
    cut the child off from it when the process forked. Open a new connection
    in the child, or take one from a pool or engine (they give the child
    fresh connections of its own).

    .. versionadded:: 0.1
    """

    __module__ = "atfork.integrations.db"


def inherited_error(what: str, method: str) -> InheritedConnectionError:
    """The error raised when the child calls ``method`` of ``what``."""
    return InheritedConnectionError(
        f"{what}.{method}(): process {os.getpid()} inherited this connection from its parent "
        "through fork(); it carries the parent's server session, so atfork cut the child off "
        "from it. Open a new connection in the child (pools and engines hand the child fresh "
        "connections of its own)."
    )


class Neutraliser:
    """Replaces a descriptor by ``/dev/null``, opened once per child pass.

    After ``dup2`` the descriptor number still exists, so the driver's own
    close, shutdown or finaliser later acts on ``/dev/null``: a send or a
    shutdown fails (ENOTSOCK) and nothing reaches the parent's session,
    while the parent's copy of the socket is untouched.
    """

    __slots__ = ("_null",)

    def __init__(self) -> None:
        self._null = -1

    def __call__(self, fd: int) -> None:
        if fd < 0:  # closed socket objects report -1
            return
        if self._null < 0:
            self._null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        os.dup2(self._null, fd, inheritable=False)

    def close(self) -> None:
        if self._null >= 0:
            os.close(self._null)
            self._null = -1


#: ``quarantine(obj, neutralise)``: called in the child for each live entry.
Quarantine = Callable[[Any, Neutraliser], None]

R = TypeVar("R")


class _Entry:
    __slots__ = ("alive", "auto", "get", "keep", "quarantine")

    def __init__(
        self,
        get: Callable[[], object],
        quarantine: Quarantine,
        auto: bool,
        keep: bool,
        alive: Callable[[Any], bool] | None,
    ) -> None:
        self.get = get
        self.quarantine = quarantine
        #: Registered by enable()'s discovery (dropped by disable()), not by track().
        self.auto = auto
        #: Stays registered in the child (pools, engines, clients); a
        #: connection's entry is dropped once it is quarantined.
        self.keep = keep
        #: For strongly held objects: False once the object is closed.
        self.alive = alive


_entries: dict[int, _Entry] = {}


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    entry = _entries.get(key)
    if entry is not None and entry.get is ref:
        _entries.pop(key, None)


def register(
    obj: object,
    quarantine: Quarantine,
    *,
    auto: bool,
    keep: bool = False,
    alive: Callable[[Any], bool] | None = None,
) -> None:
    """Quarantine ``obj`` in every child forked from now on.

    ``obj`` is held weakly if its type allows, else strongly until ``alive``
    says it is closed (see :func:`prune`). A ``track()`` registration is
    never downgraded to an automatic one.
    """
    key = id(obj)
    old = _entries.get(key)
    if old is not None and old.get() is obj:
        auto = auto and old.auto
    get = ref_or_strong(obj, functools.partial(_forget, key))  # sqlite3: strong
    _entries[key] = _Entry(get, quarantine, auto, keep, alive)


def forget_auto() -> None:
    """Drop the registrations made by enable()'s discovery."""
    for key, entry in list(_entries.items()):
        if entry.auto:
            _entries.pop(key, None)


def prune() -> None:
    """Release strongly held objects that were closed since (parent side)."""
    for key, entry in list(_entries.items()):
        if entry.alive is not None and not entry.alive(entry.get()):
            _entries.pop(key, None)


def tracked_count() -> int:
    return len(_entries)


def quarantine_all() -> None:
    """The child pass: quarantine every live registered object.

    One failure does not stop the others; the first is raised at the end so
    that atfork reports it through ``sys.unraisablehook``.
    """
    neutralise = Neutraliser()
    error: Exception | None = None
    try:
        # A copy: a weak reference callback run by the garbage collector
        # during the loop may change the dict.
        for key, entry in list(_entries.items()):
            obj = entry.get()
            if obj is None:
                continue
            if not entry.keep:
                _entries.pop(key, None)
            try:
                entry.quarantine(obj, neutralise)
            except Exception as exc:  # noqa: BLE001  (reported after the others ran)
                error = error or exc
    finally:
        neutralise.close()
    if error is not None:
        raise error


# -- never finalising an object ----------------------------------------------

_incref: Callable[[object], None] | None = None
_kept: list[object] = []


def prepare_leak() -> None:
    """Make :func:`leak` ready; called in the parent, so a child imports nothing."""
    global _incref
    if _incref is None:
        try:
            import ctypes
        except ImportError:  # pragma: no cover  (CPython without ctypes)
            return
        _incref = ctypes.PYFUNCTYPE(None, ctypes.py_object)(("Py_IncRef", ctypes.pythonapi))


def leak(obj: object) -> None:
    """Keep ``obj`` alive for good: its finaliser never runs in this process,
    not even at interpreter exit (a reference nobody releases, where a list
    would be cleared at shutdown)."""
    if _incref is not None:
        _incref(obj)
    else:  # pragma: no cover  (without ctypes: kept until shutdown only)
        _kept.append(obj)


# -- quarantine classes ---------------------------------------------------------

_classes: dict[type, type] = {}


def is_quarantined(obj: object) -> bool:
    return getattr(type(obj), "__atfork_inherited__", False) is True


def original_class(cls: type) -> type:
    """``cls``, or for a quarantine class the class it was made from."""
    return cls.__mro__[1] if vars(cls).get("__atfork_inherited__") else cls


def _blocked(what: str, name: str) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise inherited_error(what, name)

    method.__name__ = method.__qualname__ = name
    return method


def quarantine_class(
    cls: type, blocked: Iterable[str], overrides: dict[str, Any] | None = None
) -> type:
    """The subclass an inherited ``cls`` instance is switched to in a child.

    Its ``blocked`` methods raise :class:`InheritedConnectionError`; it adds
    no slot, so ``__class__`` assignment accepts it. Built once per class,
    normally in the parent when the first instance is registered.
    """
    quarantined = _classes.get(cls)
    if quarantined is not None:
        return quarantined
    what = f"{cls.__module__}.{cls.__qualname__}"
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": cls.__module__,
        "__qualname__": f"Inherited{cls.__qualname__}",
        "__atfork_inherited__": True,
    }
    for name in blocked:
        original = getattr(cls, name, None)
        if original is not None:
            namespace[name] = _blocked(what, name)
    namespace.update(overrides or {})
    quarantined = type(cls)(f"Inherited{cls.__name__}", (cls,), namespace)
    _classes[cls] = _classes[quarantined] = quarantined
    return quarantined


def swap_class(obj: object, quarantined: type) -> None:
    if type(obj) is not quarantined and not is_quarantined(obj):
        obj.__class__ = quarantined


def sock_quarantine(quarantined: type) -> Quarantine:
    """How to quarantine a pure-Python connection that keeps its socket in
    ``_sock`` (PyMySQL, redis-py): the socket neutralised, the class
    switched to ``quarantined``."""

    def quarantine(conn: Any, neutralise: Neutraliser) -> None:
        if is_quarantined(conn):
            return
        sock = vars(conn).get("_sock")
        if sock is not None:
            neutralise(sock.fileno())
        swap_class(conn, quarantined)

    return quarantine


# -- patches installed by enable() -----------------------------------------------

_patches: list[tuple[Any, str, Any, Any]] = []
_MARK = "__atfork_db__"


def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.name`` by ``make(original)`` unless already done."""
    current = getattr(owner, name)
    if getattr(current, _MARK, False):
        return
    wrapper = make(current)
    setattr(wrapper, _MARK, True)
    own = name in vars(owner)
    setattr(owner, name, wrapper)
    _patches.append((owner, name, current if own else None, wrapper))


def unpatch() -> None:
    """Undo every :func:`patch` whose wrapper is still in place."""
    while _patches:
        owner, name, original, wrapper = _patches.pop()
        if vars(owner).get(name) is wrapper:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def registering_init(
    active: Callable[[], bool], track: Callable[..., bool]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """For :func:`patch`: an ``__init__`` wrapper that, while ``active()``,
    registers each new object with ``track(obj, auto=True)``."""

    def make(original: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            if active():
                track(self, auto=True)

        return __init__

    return make


def per_type(find: Callable[[Any], R]) -> Callable[[Any], R]:
    """``find(obj)``, remembered per type. It is first asked in the parent,
    when an object registers, so a child finds the answer ready."""
    cache: dict[type, R] = {}

    @functools.wraps(find)
    def lookup(obj: Any) -> R:
        kind = type(obj)
        try:
            return cache[kind]
        except KeyError:
            found = cache[kind] = find(obj)
            return found

    return lookup


def track_connection(
    obj: Any, quarantine_for: Callable[[Any], Quarantine | None], *, auto: bool
) -> bool:
    """Register a connection ``quarantine_for`` knows; False if it does not."""
    quarantine = quarantine_for(obj)
    if quarantine is None:
        return False
    register(obj, quarantine, auto=auto)
    return True
