"""redis-py: connections, pools, clients and PubSub.

redis-py's pools check the process id and drop inherited connections
without shutting their sockets down (redis-py #234, #863), so pooled
clients are already safe. What is not: a ``Connection`` used directly, a
``PubSub`` (it keeps one connection for its subscriptions) and a client made
with ``single_connection_client=True``. Their connections are quarantined.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from atfork.integrations.db import _quarantine as q

__all__ = ["install", "quarantine_for", "track"]

_BLOCKED = (
    "connect",
    "connect_check_health",
    "on_connect",
    "on_connect_check_health",
    "send_command",
    "send_packed_command",
    "read_response",
    "can_read",
    "check_health",
)


def _connection_type() -> type | None:
    module = sys.modules.get("redis.connection")
    found = getattr(module, "AbstractConnection", None) or getattr(module, "Connection", None)
    return found if isinstance(found, type) else None


@q.per_type
def quarantine_for(conn: Any) -> q.Quarantine | None:
    """How to quarantine a redis-py connection, or None."""
    base = _connection_type()
    if base is None or not isinstance(conn, base):
        return None
    # disconnect() stays: it closes the child's descriptor only, since
    # redis-py skips shutdown() in a process other than the one that
    # connected; and the pool's own pid check drops the connection.
    return q.sock_quarantine(q.quarantine_class(q.original_class(type(conn)), _BLOCKED))


def _connections(obj: Any) -> list[Any]:
    """The connections a client, a pool or a PubSub holds now."""
    state = vars(obj)
    found: list[Any] = []
    if state.get("connection") is not None:  # PubSub, single-connection client
        found.append(state["connection"])
    for name in ("_available_connections", "_in_use_connections", "_connections"):
        found.extend(state.get(name) or ())
    pool = state.get("connection_pool")
    if pool is not None:  # a client: its pool's connections too
        found.extend(_connections(pool))
    return found


def _quarantine_holder(holder: Any, neutralise: q.Neutraliser) -> None:
    for conn in _connections(holder):
        quarantine = quarantine_for(conn)
        if quarantine is not None:
            quarantine(conn, neutralise)


def _holder_types() -> tuple[type, ...]:
    client = sys.modules.get("redis.client")
    connection = sys.modules.get("redis.connection")
    found = (
        getattr(client, "Redis", None),
        getattr(client, "PubSub", None),
        getattr(connection, "ConnectionPool", None),
    )
    return tuple(t for t in found if isinstance(t, type))


def track(obj: Any, *, auto: bool = False) -> bool:
    """Register ``obj`` if it is one of ours; False if it is not."""
    holders = _holder_types()
    if holders and isinstance(obj, holders):
        q.register(obj, _quarantine_holder, auto=auto, keep=True)
        return True
    return q.track_connection(obj, quarantine_for, auto=auto)


def install(covers: Callable[[str], bool]) -> dict[str, Callable[[Any], None]]:
    """What enable() runs when redis is imported: every connection object
    registers itself when it is built (it connects later, lazily)."""

    def active() -> bool:
        return covers("redis")

    def on_redis(module: Any) -> None:
        base = _connection_type()
        if active() and base is not None:
            q.patch(base, "__init__", q.registering_init(active, track))

    return {"redis": on_redis}
