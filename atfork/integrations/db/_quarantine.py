"""What a child quarantines, and the tools every driver family uses for it.

The registry, the ``dup2`` to ``/dev/null`` and the patches are the shared
ones of :mod:`atfork.integrations._quarantine`; this module holds the db
integration's own registry and patches (module-level names, so that the
driver modules read ``q.register(...)``), and the quarantine classes whose
methods raise :class:`InheritedConnectionError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Callable

from atfork.integrations._quarantine import (
    Neutraliser,
    Patches,
    Quarantine,
    Registry,
    keep_forever,
    per_type,
    prepare_keep_forever,
    registering_init,
)
from atfork.integrations._toolkit import Subclasses

__all__ = [
    "InheritedConnectionError",
    "Neutraliser",
    "Quarantine",
    "forget_auto",
    "inherited_error",
    "is_quarantined",
    "keep_forever",
    "original_class",
    "patch",
    "per_type",
    "prepare_keep_forever",
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


_registry = Registry()
_entries = _registry.entries
register = _registry.register
forget_auto = _registry.forget_auto
prune = _registry.prune
tracked_count = _registry.tracked_count
quarantine_all = _registry.quarantine_all


# -- quarantine classes ---------------------------------------------------------

_classes = Subclasses(prefix="Inherited")


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
    namespace: dict[str, Any] = {"__atfork_inherited__": True}
    for name in blocked:
        original = getattr(cls, name, None)
        if original is not None:
            namespace[name] = _blocked(what, name)
    namespace.update(overrides or {})
    return _classes.make(cls, namespace)


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

_patches = Patches("__atfork_db__")
patch = _patches.patch
unpatch = _patches.unpatch


def track_connection(
    obj: Any, quarantine_for: Callable[[Any], Quarantine | None], *, auto: bool
) -> bool:
    """Register a connection ``quarantine_for`` knows; False if it does not."""
    quarantine = quarantine_for(obj)
    if quarantine is None:
        return False
    register(obj, quarantine, auto=auto)
    return True
