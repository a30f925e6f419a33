"""PostgreSQL: psycopg2, psycopg 3 and psycopg_pool.

None of them is imported here: their classes are looked up in
``sys.modules``, which holds them whenever such an object exists.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from typing import Any, Callable

from atfork.integrations.db import _quarantine as q

__all__ = ["install", "quarantine_for", "track"]

_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE, libpq's PQTRANS_IDLE

# -- psycopg2 -----------------------------------------------------------------
# Its connection is a C type whose class cannot be switched, but
# ``conn.cursor()`` calls the ``cursor_factory`` attribute first: a factory
# that raises makes the usual way in fail with the clear error. Other calls
# (commit, an explicit cursor_factory=, a cursor made before the fork) reach
# the neutralised socket and fail with psycopg2's own error.


def _psycopg2_factory(conn: Any, *args: Any, **kwargs: Any) -> Any:
    raise q.inherited_error("psycopg2.extensions.connection", "cursor")


def _quarantine_psycopg2(conn: Any, neutralise: q.Neutraliser) -> None:
    if not conn.closed:
        neutralise(conn.fileno())
    conn.cursor_factory = _psycopg2_factory


# -- psycopg 3 ----------------------------------------------------------------

_PSYCOPG_BLOCKED = (
    "cursor",
    "execute",
    "commit",
    "transaction",
    "pipeline",
    "notifies",
    "cancel",
    "cancel_safe",
    "xid",
    "tpc_begin",
    "tpc_prepare",
    "tpc_commit",
    "tpc_rollback",
    "tpc_recover",
    "set_autocommit",
    "set_isolation_level",
    "set_read_only",
    "set_deferrable",
    "__enter__",
    "__aenter__",
)


def _psycopg_overrides(cls: type) -> dict[str, Any]:
    what = f"{cls.__module__}.{cls.__qualname__}"

    def close(self: Any) -> None:
        # Local only: the socket is /dev/null now, so libpq's goodbye
        # message goes nowhere; this frees the descriptor and the memory.
        self.pgconn.finish()

    def rollback(self: Any) -> None:
        # Nothing to undo outside a transaction (what a pool's reset does
        # on return); inside one, the transaction is the parent's.
        if self.pgconn.transaction_status != _IDLE:
            raise q.inherited_error(what, "rollback")

    async def arollback(self: Any) -> None:
        rollback(self)

    async def aclose(self: Any) -> None:
        close(self)

    is_async = inspect.iscoroutinefunction(getattr(cls, "close", None))
    return {
        "close": aclose if is_async else close,
        "rollback": arollback if is_async else rollback,
        # Pools (psycopg_pool's putconn) and psycopg's own finaliser treat
        # it as closed: it is never handed out or warned about again.
        "closed": property(lambda self: True),
        "broken": property(lambda self: True),
        "__del__": lambda self: None,
    }


def _quarantine_psycopg(cls: type, conn: Any, neutralise: q.Neutraliser) -> None:
    if q.is_quarantined(conn):
        return
    if not conn.closed:
        neutralise(conn.pgconn.socket)
    q.swap_class(conn, cls)


def _psycopg_quarantine(conn_type: type) -> q.Quarantine:
    cls = q.quarantine_class(conn_type, _PSYCOPG_BLOCKED, _psycopg_overrides(conn_type))
    return lambda conn, neutralise: _quarantine_psycopg(cls, conn, neutralise)


# -- psycopg_pool -------------------------------------------------------------
# In the child an inherited pool has lost its worker threads, and its idle
# connections are the parent's. Its class is switched to one that, on first
# use, runs ConnectionPool.__init__ again on the same object with the same
# settings: a pool of the child's own (opened if the parent's was open).
# Nothing happens at fork time but the class switch, and a child that never
# uses the pool never connects.

_REVIVED = "_atfork_revived"
_LOCK = "_atfork_lock"

# ConnectionPool.__init__ parameters, and where an instance keeps each.
_POOL_SETTINGS = {
    "conninfo": "conninfo",
    "kwargs": "kwargs",
    "connection_class": "connection_class",
    "min_size": "_min_size",
    "max_size": "_max_size",
    "configure": "_configure",
    "check": "_check",
    "reset": "_reset",
    "name": "name",
    "close_returns": "close_returns",
    "timeout": "timeout",
    "max_waiting": "max_waiting",
    "max_lifetime": "max_lifetime",
    "max_idle": "max_idle",
    "reconnect_timeout": "reconnect_timeout",
    "reconnect_failed": "_reconnect_failed",
    "num_workers": "num_workers",
}

_POOL_METHODS = (
    "getconn",
    "connection",
    "wait",
    "open",
    "resize",
    "check",
    "drain",
    "get_stats",
    "pop_stats",
    "__enter__",
    "__exit__",
)


def _revive(pool: Any, base: Any, open_it: bool | None) -> None:
    state = vars(pool)
    if state.get(_REVIVED):
        return
    with state[_LOCK]:
        if state.get(_REVIVED):
            return
        params = inspect.signature(base.__init__).parameters
        settings = {p: state[a] for p, a in _POOL_SETTINGS.items() if p in params and a in state}
        if open_it is None:
            open_it = not state.get("_closed", True)
        base.__init__(pool, open=open_it, **settings)
        state[_REVIVED] = True


def _pool_class(base: Any) -> type:
    def reviving(name: str) -> Callable[..., Any]:
        original = getattr(base, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            _revive(self, base, None)
            return original(self, *args, **kwargs)

        method.__name__ = method.__qualname__ = name
        return method

    def putconn(self: Any, conn: Any) -> None:
        if q.is_quarantined(conn):  # the parent's: it never re-enters a pool
            conn.close()
            return
        _revive(self, base, None)
        base.putconn(self, conn)

    def close(self: Any, *args: Any, **kwargs: Any) -> None:
        _revive(self, base, False)  # a fresh closed pool: nothing to open or to stop
        base.close(self, *args, **kwargs)

    def __del__(self: Any) -> None:
        if vars(self).get(_REVIVED):
            base.__del__(self)  # the child's own workers, if it opened the pool

    overrides: dict[str, Any] = {n: reviving(n) for n in _POOL_METHODS if hasattr(base, n)}
    overrides.update(putconn=putconn, close=close, __del__=__del__)
    return q.quarantine_class(base, (), overrides)


def _quarantine_pool(cls: type, pool: Any, neutralise: q.Neutraliser) -> None:
    for conn in list(vars(pool).get("_pool", ())):  # idle: the parent's connections
        quarantine = quarantine_for(conn)
        if quarantine is not None:
            quarantine(conn, neutralise)
    q.swap_class(pool, cls)
    state = vars(pool)
    state.pop(_REVIVED, None)
    state[_LOCK] = threading.Lock()  # made in the child: nobody holds it


def _pool_quarantine(pool_type: type) -> q.Quarantine:
    cls = _pool_class(q.original_class(pool_type))
    return lambda pool, neutralise: _quarantine_pool(cls, pool, neutralise)


# -- type dispatch ---------------------------------------------------------------


def _psycopg2_type() -> type | None:
    extensions = sys.modules.get("psycopg2.extensions")
    return getattr(extensions, "connection", None)


def _psycopg_type() -> type | None:
    return getattr(sys.modules.get("psycopg"), "BaseConnection", None)


def _pool_types() -> tuple[type, ...]:
    module = sys.modules.get("psycopg_pool")
    found = getattr(module, "ConnectionPool", None)
    return (found,) if isinstance(found, type) else ()


@q.per_type
def quarantine_for(conn: Any) -> q.Quarantine | None:
    """How to quarantine a psycopg2 or psycopg connection, or None."""
    psycopg2_type = _psycopg2_type()
    if psycopg2_type is not None and isinstance(conn, psycopg2_type):
        return _quarantine_psycopg2
    psycopg_type = _psycopg_type()
    if psycopg_type is not None and isinstance(conn, psycopg_type):
        return _psycopg_quarantine(type(conn))
    return None


@q.per_type
def _pool_quarantine_for(pool: Any) -> q.Quarantine | None:
    pools = _pool_types()
    return _pool_quarantine(type(pool)) if pools and isinstance(pool, pools) else None


def track(obj: Any, *, auto: bool = False) -> bool:
    """Register ``obj`` if it is one of ours; False if it is not."""
    quarantine = _pool_quarantine_for(obj)
    if quarantine is not None:
        q.register(obj, quarantine, auto=auto, keep=True)
        return True
    return q.track_connection(obj, quarantine_for, auto=auto)


# -- enable() -------------------------------------------------------------------


def install(covers: Callable[[str], bool]) -> dict[str, Callable[[Any], None]]:
    """What enable() runs when each library is imported; ``covers(name)``
    tells whether that library is still to be covered."""

    def on_psycopg2(module: Any) -> None:
        active = functools.partial(covers, "psycopg2")
        if not active():
            return

        def make(connect: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                conn = connect(*args, **kwargs)
                if active():
                    track(conn, auto=True)
                return conn

            wrapper.__doc__ = connect.__doc__
            wrapper.__name__ = wrapper.__qualname__ = "connect"
            wrapper.__wrapped__ = connect  # type: ignore[attr-defined]
            return wrapper

        q.patch(module, "connect", make)

    def on_psycopg(module: Any) -> None:
        active = functools.partial(covers, "psycopg")
        if active():
            q.patch(module.BaseConnection, "__init__", q.registering_init(active, track))

    def on_pool(module: Any) -> None:
        active = functools.partial(covers, "psycopg_pool")
        if active():
            q.patch(module.ConnectionPool, "__init__", q.registering_init(active, track))

    return {"psycopg2": on_psycopg2, "psycopg": on_psycopg, "psycopg_pool": on_pool}
