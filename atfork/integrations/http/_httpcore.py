"""httpcore's connection pools, and so httpx's ``Client`` and ``AsyncClient``.

An httpcore pool (``ConnectionPool``, ``AsyncConnectionPool`` and their
proxy subclasses) lists every connection it holds, idle or in use, in
``_connections``; each wraps an HTTP/1.1 or HTTP/2 connection whose
``_network_stream`` gives its socket through ``get_extra_info("socket")``
(the sync backend's socket, or the raw socket under AnyIO's streams). In
the child each socket's descriptor is neutralised and the connection's
keep-alive deadline (``_expire_at``) is put in the past, so the pool's own
clean-up on the next request closes it (``/dev/null``) and connects
afresh; an idle HTTP/1.1 connection would be found expired anyway, its
socket polling readable, but an HTTP/2 one only by its deadline. httpcore
1.0 and httpx 0.28 have no pid check.

With ``enable()``, every pool registers itself when it is built, whoever
builds it (httpx's transports, or the program). ``track()`` takes a pool,
an httpx transport or client (:data:`KINDS`).
"""

from __future__ import annotations

from typing import Any

from atfork.integrations import _quarantine as q

__all__ = ["FOUND", "KINDS", "TRACKABLE", "connected", "quarantine_pool"]

# How far _connection attributes nest: a proxy's connection wraps an
# HTTPConnection, which wraps the HTTP/1.1 or HTTP/2 one.
_DEPTH = 4


def _protocol_connection(conn: Any) -> Any:
    """The object holding ``_network_stream`` under a pool's connection, or
    None before it connected."""
    for _ in range(_DEPTH):
        state = getattr(conn, "__dict__", None)
        if state is None:
            return None
        if "_network_stream" in state:
            return conn
        conn = state.get("_connection")
    return None


def connected(pool: Any) -> list[tuple[Any, Any, Any]]:
    """(connection, the object holding its stream, its socket or None) for
    every connection of an httpcore pool that connected."""
    found = []
    for conn in list(vars(pool).get("_connections") or ()):
        protocol = _protocol_connection(conn)
        if protocol is not None:
            found.append((conn, protocol, protocol._network_stream.get_extra_info("socket")))
    return found


def quarantine_pool(pool: Any, neutralise: q.Neutraliser) -> None:
    """Neutralise every connection of an httpcore pool and mark it expired."""
    for _, protocol, sock in connected(pool):
        if sock is not None:
            neutralise(sock.fileno())
        if "_expire_at" in vars(protocol):
            protocol._expire_at = 0.0  # before any time.monotonic(): expired


def _pools(holder: Any) -> list[Any]:
    """The httpcore pools of an httpx client or transport (a transport of
    another kind, a mock say, has none)."""
    state = vars(holder)
    transports = [holder] if "_pool" in state else [state.get("_transport")]
    transports.extend((state.get("_mounts") or {}).values())
    found = (getattr(t, "__dict__", {}).get("_pool") for t in transports)
    return [pool for pool in found if pool is not None]


def _quarantine_holder(holder: Any, neutralise: q.Neutraliser) -> None:
    for pool in _pools(holder):
        quarantine_pool(pool, neutralise)


#: The types ``track()`` takes, by module and name, each with its quarantine.
KINDS: tuple[tuple[str, str, q.Quarantine], ...] = (
    ("httpcore", "ConnectionPool", quarantine_pool),
    ("httpcore", "AsyncConnectionPool", quarantine_pool),
    ("httpx", "Client", _quarantine_holder),
    ("httpx", "AsyncClient", _quarantine_holder),
    ("httpx", "HTTPTransport", _quarantine_holder),
    ("httpx", "AsyncHTTPTransport", _quarantine_holder),
)
TRACKABLE = (
    "an httpx Client, AsyncClient, HTTPTransport or AsyncHTTPTransport, an httpcore "
    "ConnectionPool or AsyncConnectionPool"
)

#: What enable() wraps when httpcore is imported (httpx imports it when its
#: first transport is built): every pool registers itself when it is built.
FOUND = KINDS[:2]
