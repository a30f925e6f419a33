"""Database connections across fork: a child never uses, breaks or reads the
parent's connections.

What breaks without it
    A forked child inherits every open connection's socket, so parent and
    child share one server session. Measured on PostgreSQL 15, Redis 7 and
    MariaDB: a child's ``conn.close()`` (psycopg2, psycopg 3, PyMySQL) ends
    the parent's session and the parent's next query fails ("server closed
    the connection unexpectedly"); parent and child querying one connection
    at once read each other's rows (psycopg2 #853); a SQLAlchemy engine hands
    the child the parent's pooled connections, and ``engine.dispose()`` in
    the child closes them under the parent (SQLAlchemy #7815); psycopg_pool
    gives the child the parent's sessions, then times out (its worker
    threads are gone); a redis-py ``Connection`` or ``PubSub`` used in the
    child takes the parent's replies and messages (redis-py's pools check
    the pid since redis-py #234 and #863: pooled clients are safe); and a
    child that simply exits while the parent is inside an SQLite transaction
    makes the parent's COMMIT fail with "disk I/O error" (SQLite's
    "How to corrupt", section 2.6). libpq and SQLite both say: do not use a
    connection across fork.

What the standard library does
    Nothing, on any of 3.9 to 3.13: ``os.fork`` copies the descriptors and
    sqlite3 has no fork handling. Some drivers guard their finalisers:
    psycopg2 and psycopg do not close a connection garbage-collected in
    another process, and redis-py does not shut an inherited socket down;
    an explicit ``close()`` still ends the shared session. SQLAlchemy
    documents a recipe (a "checkout" event, or ``engine.dispose(close=False)``)
    that each program must apply to each engine.

What this module does
    prepare: nothing. parent: releases tracked SQLite connections that were
    closed since. child: quarantines every inherited connection it knows of
    (the work is a few system calls and attribute writes per connection,
    no lock, no network): the socket's descriptor is replaced by
    ``/dev/null`` with ``dup2``, so whatever the child does (close, dispose,
    garbage collection, exit) sends nothing on the parent's session and
    cannot read its replies; the connection object is switched to a
    subclass whose methods raise :class:`InheritedConnectionError`;
    SQLAlchemy pool records let go of their inherited connection, so the
    pool connects afresh; a psycopg_pool pool rebuilds itself in place on
    first use; an inherited SQLite connection is never finalised and denies
    every statement. The parent is never touched.

:func:`enable` finds connections by itself, without importing any driver:
it acts when the program imports one (SQLAlchemy's Pool "connect" event;
wrappers around ``psycopg2.connect`` and the constructors of psycopg,
psycopg_pool, redis-py and PyMySQL connections). :func:`track` covers one
object, whether or not :func:`enable` was called.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, TypeVar

from atfork.integrations import PRIORITY_DB
from atfork.integrations._imports import when_imported
from atfork.integrations._toolkit import HookSlot
from atfork.integrations.db import _mysql, _postgres, _redis, _sqlalchemy, _sqlite
from atfork.integrations.db import _quarantine as q
from atfork.integrations.db._quarantine import InheritedConnectionError

__all__ = ["DRIVERS", "InheritedConnectionError", "disable", "enable", "is_enabled", "track"]

T = TypeVar("T")

#: The libraries :func:`enable` covers by itself, by import name.
DRIVERS: tuple[str, ...] = ("psycopg", "psycopg2", "psycopg_pool", "pymysql", "redis", "sqlalchemy")

_hook = HookSlot()
_drivers: frozenset[str] = frozenset()


# -- prepare: nothing. parent ----------------------------------------------------


def _parent() -> None:
    q.prune()


# -- child ------------------------------------------------------------------------


def _child() -> None:
    q.quarantine_all()


def _ensure_hook() -> None:
    _hook.register(
        parent=_parent, child=_child, priority=PRIORITY_DB, name="atfork.integrations.db"
    )


# -- public API ---------------------------------------------------------------------


def _covers(name: str) -> bool:
    return name in _drivers


def _installers() -> dict[str, Callable[[Any], None]]:
    found: dict[str, Callable[[Any], None]] = {}
    for module in (_postgres, _redis, _mysql, _sqlalchemy):
        found.update(module.install(_covers))
    return found


def enable(*, drivers: Iterable[str] = DRIVERS) -> None:
    """Quarantine inherited connections in every forked child, finding them
    automatically.

    Idempotent. A library imported later is covered from its import on;
    connections opened before :func:`enable` are covered if :func:`track`
    is given them (or their engine, pool or client).

    :param drivers: the import names of the libraries to cover (a subset of
        :data:`DRIVERS`; all of them by default). Calling again with another
        set covers exactly that set.
    :raises TypeError: ``drivers`` is a string or not an iterable of strings.
    :raises ValueError: a name is not in :data:`DRIVERS`.

    .. versionadded:: 0.1
    """
    global _drivers
    if isinstance(drivers, (str, bytes)) or not isinstance(drivers, Iterable):
        raise TypeError(f"drivers must be an iterable of names, not {type(drivers).__name__}")
    chosen = frozenset(drivers)
    for name in chosen:
        if not isinstance(name, str):
            raise TypeError(f"drivers must hold strings, not {type(name).__name__}")
    unknown = sorted(chosen - set(DRIVERS))
    if unknown:
        raise ValueError(f"unknown drivers {unknown}; known: {', '.join(DRIVERS)}")
    if _drivers and chosen != _drivers:
        disable()
    _drivers = chosen
    _ensure_hook()
    installers = _installers()
    for name in sorted(chosen):
        when_imported(name, installers[name])


def disable() -> None:
    """Undo :func:`enable`: remove its wrappers and listeners and forget what
    it found. Objects given to :func:`track` stay covered. Idempotent.

    .. versionadded:: 0.1
    """
    global _drivers
    _drivers = frozenset()
    q.unpatch()
    _sqlalchemy.uninstall()
    q.forget_auto()
    if not q.tracked_count():
        _hook.release()


def is_enabled() -> bool:
    """Whether :func:`enable` is in effect.

    .. versionadded:: 0.1
    """
    return bool(_drivers)


def track(obj: T) -> T:
    """Quarantine ``obj`` in every child forked from now on; return ``obj``.

    Takes a ``sqlite3.Connection``, a psycopg2 or psycopg connection, a
    ``psycopg_pool.ConnectionPool``, a SQLAlchemy ``Engine`` (or
    ``AsyncEngine``, or ``Pool``), a redis-py ``Redis``, ``ConnectionPool``,
    ``PubSub`` or ``Connection``, or a PyMySQL connection. It is held weakly,
    except a ``sqlite3.Connection`` (it cannot be weakly referenced): that is
    held until it is closed, and released at the next fork after that.

    For an engine, the connections idle in its pool now and every connection
    it opens from now on are covered; connections checked out at the moment
    of the call are covered only with :func:`enable`.

    :raises TypeError: ``obj`` is none of those.

    .. versionadded:: 0.1
    """
    if not (
        _sqlite.track(obj)
        or _sqlalchemy.track(obj)
        or _postgres.track(obj)
        or _redis.track(obj)
        or _mysql.track(obj)
    ):
        raise TypeError(
            f"atfork.integrations.db.track() takes a sqlite3, psycopg2, psycopg or PyMySQL "
            f"connection, a psycopg_pool pool, a SQLAlchemy engine or pool, or a redis-py "
            f"client, pool, PubSub or connection, not {type(obj).__module__}."
            f"{type(obj).__qualname__}"
        )
    _ensure_hook()
    return obj
