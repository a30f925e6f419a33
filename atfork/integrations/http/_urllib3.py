"""urllib3 (1.26 and 2.x), and what pools through it: requests, botocore.

A urllib3 connection keeps its socket in ``sock`` (an ``ssl.SSLSocket``,
urllib3's ``SSLTransport`` or pyOpenSSL's ``WrappedSocket`` for TLS; each
has ``fileno()``). In the child the descriptor is neutralised and the
connection object is left as it is: the pool's own check on checkout,
``is_connection_dropped()`` (a zero-timeout poll, which ``/dev/null``
always answers readable), finds it dropped, closes it (``/dev/null``) and
connects the same object afresh. No pid check exists in urllib3 1.26 or
2.x, nor in requests or botocore.

With ``enable()``, every urllib3 connection registers itself when it is
built, so connections checked out at the fork (a streamed response not read
to its end) are covered too. ``track()`` of a pool or a client (one of
:data:`KINDS`) covers the connections idle in its pools at each fork.
"""

from __future__ import annotations

from typing import Any

from atfork.integrations import _quarantine as q

__all__ = ["FOUND", "KINDS", "TRACKABLE"]


def quarantine_connection(conn: Any, neutralise: q.Neutraliser) -> None:
    """Neutralise the socket of a urllib3 connection (if it has one)."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        neutralise(sock.fileno())


def _idle(pool: Any) -> list[Any]:
    """The connections idle in a urllib3 ``HTTPConnectionPool`` now; the
    queue's list is read without its lock (the child has one thread)."""
    queue = vars(pool).get("pool")  # None once the pool is closed
    return [conn for conn in getattr(queue, "queue", ()) if conn is not None]


def _pools(manager: Any) -> list[Any]:
    """The pools of a ``PoolManager`` (its ``RecentlyUsedContainer``)."""
    container = vars(manager).get("pools")
    return list(getattr(container, "_container", {}).values())


def _managers(holder: Any) -> list[Any]:
    """The pool managers of a requests ``Session`` or ``HTTPAdapter``, or of
    a botocore client or ``URLLib3Session``."""
    state = vars(holder)
    if "adapters" in state:  # a requests Session
        return [m for adapter in state["adapters"].values() for m in _managers(adapter)]
    if "_endpoint" in state:  # a botocore client
        return _managers(state["_endpoint"].http_session)
    found = [state.get("poolmanager"), state.get("_manager")]  # HTTPAdapter, URLLib3Session
    for proxies in (state.get("proxy_manager"), state.get("_proxy_managers")):
        found.extend((proxies or {}).values())
    return [m for m in found if m is not None]


def _quarantine_pool(pool: Any, neutralise: q.Neutraliser) -> None:
    for conn in _idle(pool):
        quarantine_connection(conn, neutralise)


def _quarantine_manager(manager: Any, neutralise: q.Neutraliser) -> None:
    for pool in _pools(manager):
        _quarantine_pool(pool, neutralise)


def _quarantine_holder(holder: Any, neutralise: q.Neutraliser) -> None:
    for manager in _managers(holder):
        _quarantine_manager(manager, neutralise)


#: The types ``track()`` takes, by module and name, each with its quarantine.
KINDS: tuple[tuple[str, str, q.Quarantine], ...] = (
    ("urllib3.connection", "HTTPConnection", quarantine_connection),
    ("urllib3.connectionpool", "HTTPConnectionPool", _quarantine_pool),
    ("urllib3.poolmanager", "PoolManager", _quarantine_manager),
    ("requests.sessions", "Session", _quarantine_holder),
    ("requests.adapters", "HTTPAdapter", _quarantine_holder),
    ("botocore.client", "BaseClient", _quarantine_holder),
    ("botocore.httpsession", "URLLib3Session", _quarantine_holder),
)
TRACKABLE = (
    "a urllib3 PoolManager, HTTPConnectionPool or HTTPConnection, a requests Session "
    "or HTTPAdapter, a botocore client or URLLib3Session"
)

#: What enable() wraps when urllib3 is imported: every connection (of
#: urllib3, requests, botocore: all subclass urllib3's ``HTTPConnection``)
#: registers itself when it is built (it connects later, lazily).
FOUND = KINDS[:1]
