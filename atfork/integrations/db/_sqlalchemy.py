"""SQLAlchemy: engines and their pools.

A pool's "connect" event (SQLAlchemy's documented hook, the one its fork
recipe uses) registers each connection record with the driver connection it
holds. In the child the record lets go of its inherited connection
(``record.dbapi_connection = None``, as the recipe does), so the pool never
resets, pings, reuses or closes it: the next checkout connects afresh, and
``engine.dispose()`` has nothing of the parent's to close. The connection
itself is quarantined by its driver's rules; one of a driver atfork does not
know is kept alive for good, so it is never closed gracefully either.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from atfork.integrations.db import _mysql, _postgres, _sqlite
from atfork.integrations.db import _quarantine as q

__all__ = ["install", "track"]

_FAMILIES = (_postgres.quarantine_for, _mysql.quarantine_for, _sqlite.quarantine_for)


def _quarantine_record(
    conn_quarantine: q.Quarantine | None, record: Any, neutralise: q.Neutraliser
) -> None:
    conn = record.dbapi_connection
    if conn is None:
        return
    record.dbapi_connection = None
    if conn_quarantine is None:
        q.keep_forever(conn)
    else:
        conn_quarantine(conn, neutralise)
        # Not freed now: its deallocation would cost this fork time.
        _detached.append(conn)


_detached: list[Any] = []


@q.per_type
def _record_quarantine(conn: Any) -> q.Quarantine:
    conn_quarantine = None
    for family in _FAMILIES:
        conn_quarantine = family(conn)
        if conn_quarantine is not None:
            break
    else:
        q.prepare_keep_forever()  # an unknown driver's connection is never finalised
    return functools.partial(_quarantine_record, conn_quarantine)


def _register(record: Any, conn: Any, auto: bool) -> None:
    q.register(record, _record_quarantine(conn), auto=auto)


def _on_connect_tracked(dbapi_connection: Any, record: Any) -> None:
    _register(record, dbapi_connection, False)


def _pooled_records(pool: Any) -> list[Any]:
    """The records idle in ``pool`` now (QueuePool, SingletonThreadPool)."""
    state = vars(pool)
    records = list(getattr(state.get("_pool"), "queue", ()))
    records.extend(state.get("_all_conns") or ())
    return [r for r in records if getattr(r, "dbapi_connection", None) is not None]


def track(obj: Any) -> bool:
    """Register an Engine, AsyncEngine or Pool; False if ``obj`` is none."""
    engine_module = sys.modules.get("sqlalchemy.engine")
    pool_module = sys.modules.get("sqlalchemy.pool")
    if engine_module is None or pool_module is None:
        return False
    asyncio_module = sys.modules.get("sqlalchemy.ext.asyncio")
    async_engine: Any = getattr(asyncio_module, "AsyncEngine", None)
    if async_engine is not None and isinstance(obj, async_engine):
        obj = obj.sync_engine
    if isinstance(obj, engine_module.Engine):
        pool = obj.pool
    elif isinstance(obj, pool_module.Pool):
        pool = obj
    else:
        return False
    event = sys.modules["sqlalchemy.event"]
    # On an engine, the listener stays with the pools dispose() makes.
    if not event.contains(obj, "connect", _on_connect_tracked):
        event.listen(obj, "connect", _on_connect_tracked)
    for record in _pooled_records(pool):
        _register(record, record.dbapi_connection, False)
    return True


def install(covers: Callable[[str], bool]) -> dict[str, Callable[[Any], None]]:
    """What enable() runs when SQLAlchemy is imported: a "connect" listener
    on the Pool class, which every pool, existing or future, calls."""

    def active() -> bool:
        return covers("sqlalchemy")

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        if active():
            _register(record, dbapi_connection, True)

    def on_sqlalchemy(module: Any) -> None:
        if not active():
            return
        event, pool = sys.modules["sqlalchemy.event"], sys.modules["sqlalchemy.pool"].Pool
        if not _listeners:
            _listeners.append(on_connect)
            event.listen(pool, "connect", on_connect)

    return {"sqlalchemy": on_sqlalchemy}


_listeners: list[Callable[..., None]] = []


def uninstall() -> None:
    if not _listeners:
        return
    event, pool = sys.modules["sqlalchemy.event"], sys.modules["sqlalchemy.pool"].Pool
    while _listeners:
        listener = _listeners.pop()
        if event.contains(pool, "connect", listener):
            event.remove(pool, "connect", listener)
