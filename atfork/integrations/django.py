"""Django's database connections across fork: a child never uses or closes
the connections its parent's ORM opened, and its first query opens one of
its own.

What breaks without it
    Django keeps each thread's open connection on a ``DatabaseWrapper`` in
    ``django.db.connections``, and a forked child inherits it: the child's
    next ORM query reuses it (Django ticket #31637, open since 2020).
    Measured here with PostgreSQL 15 (psycopg 3 and psycopg2), MariaDB
    (PyMySQL) and SQLite, Django 4.2, 5.2 and 6.1: the child's query runs on the
    parent's server session (the same ``pg_backend_pid()`` or
    ``connection_id()``), and after the child's ``connections.close_all()``,
    which is what the ticket and most advice tell a child to do, the
    parent's next query fails ("server closed the connection unexpectedly";
    MySQL's "Lost connection to MySQL server"). A child forked inside the
    parent's ``transaction.atomic()`` block on SQLite rolls the parent's
    transaction back as it leaves the block or exits, and the parent's
    COMMIT fails with "disk I/O error". Django 5.1's PostgreSQL pool
    (``OPTIONS={"pool": True}``, psycopg_pool) hands the child the parent's
    session the same way.

What Django and the standard library do
    Nothing, in Django 4.2 to 6.1 and on CPython 3.9 to 3.14: Django never
    checks the process id, ``os.fork`` copies the descriptors, and the
    drivers' ``close()`` ends the shared session (see
    :mod:`atfork.integrations.db`).

What this module does
    prepare, on the free-threaded build only: a copy of the list of open
    wrappers, made again only when it changed (so that the child never
    reads a dict another thread of the parent may have been writing).
    parent: nothing.

    child: for every ``DatabaseWrapper`` that had a connection open at the
    fork, the DB-API connection is quarantined with the db integration's
    machinery (its socket replaced by ``/dev/null``, its methods raising
    :class:`~atfork.integrations.db.InheritedConnectionError`; an SQLite one
    is never finalised and denies every statement), so that nothing the
    child does (a query, ``close()``, ``connections.close_all()``, garbage
    collection, exit) reaches the parent's session. The wrapper then forgets
    it the way Django's own ``close()`` does: outside an atomic block its
    ``connection`` becomes None, so the child's first query connects afresh;
    inside one, the block is marked as closed in a transaction (the child's
    queries there fail, the block rolls back nothing, and the first query
    after it connects afresh). On-commit callbacks of the parent's
    transaction are dropped. A psycopg_pool pool of Django's rebuilds
    itself in place on first use, as the db integration's pools do. An
    in-memory SQLite database is left alone: it is the child's own copy. A
    connection of a driver the db integration does not know (mysqlclient,
    Oracle) is not finalised in the child, so its goodbye never reaches the
    parent's session, and the wrapper forgets it the same way. The work is
    a system call and a few attribute writes per connection: no lock, no
    network, no import. The parent is never touched.

:func:`enable` imports nothing: when the program imports Django's backends,
it wraps ``BaseDatabaseWrapper.connect``, which registers each wrapper that
connects, in any thread, in a weak registry; wrappers the calling thread
connected before :func:`enable` are registered by it. A child has only the
forking thread: the wrappers of the parent's other threads are out of its
reach (Django's connections are per thread), and their driver connections'
finalisation there sends nothing. What is not covered is a thread that
connected before another thread called :func:`enable`, and then forks.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from atfork.integrations import PRIORITY_DJANGO
from atfork.integrations import _quarantine as q
from atfork.integrations._imports import when_imported
from atfork.integrations.db import _mysql, _postgres, _sqlite

__all__ = ["disable", "enable", "is_enabled"]

_registry = q.Registry()
_patches = q.Patches("__atfork_django__")
# prepare (free-threaded build only): a copy of the registry, once per change.
# parent: nothing. child: the quarantine pass, which calls _forget() for each
# wrapper and the db integration's pool quarantine for each pool.
_pass = q.ChildPass(_registry, priority=PRIORITY_DJANGO, name="atfork.integrations.django")
_enabled = False


# -- child ------------------------------------------------------------------------


def _leak(conn: Any, neutralise: q.Neutraliser) -> None:
    # A driver the db integration does not know: never finalised here, so
    # whatever its finaliser would send never reaches the parent's session.
    q.keep_forever(conn)


def _forget(quarantine: q.Quarantine, wrapper: Any, neutralise: q.Neutraliser) -> None:
    """The child's repair of one wrapper that was connected in the parent."""
    state = vars(wrapper)
    conn = state.get("connection")
    if conn is None:  # closed since it registered
        return
    quarantine(conn, neutralise)
    # The parent's transaction: its on-commit callbacks are not the child's.
    state["run_on_commit"] = []
    if state.get("in_atomic_block"):
        # What Django's close() does inside an atomic block: queries fail
        # until the outermost block exits, which then drops the connection
        # instead of committing or rolling back.
        state["closed_in_transaction"] = True
        state["needs_rollback"] = True
    else:
        # connect() resets the rest of the transaction state.
        state["connection"] = None


# -- registration, in the parent: what the child pass will need, computed now --


def _connection_quarantine(conn: Any) -> q.Quarantine:
    for find in (_postgres.quarantine_for, _mysql.quarantine_for, _sqlite.quarantine_for):
        found = find(conn)
        if found is not None:
            return found
    q.prepare_keep_forever()
    return _leak


def _register(wrapper: Any) -> None:
    conn = vars(wrapper).get("connection")
    if conn is None:
        return
    is_in_memory = getattr(wrapper, "is_in_memory_db", None)
    if is_in_memory is not None and is_in_memory():  # SQLite's: private to each process
        return
    quarantine = functools.partial(_forget, _connection_quarantine(conn))
    # keep: a wrapper connects again in the child, and a grandchild inherits that.
    _registry.register(wrapper, quarantine, auto=True, keep=True)
    # Django 5.1+'s PostgreSQL pool, one per alias on the wrapper's class.
    pools = getattr(type(wrapper), "_connection_pools", None)
    pool = pools.get(getattr(wrapper, "alias", None)) if isinstance(pools, dict) else None
    if pool is not None:
        pool_quarantine = _postgres._pool_quarantine_for(pool)
        if pool_quarantine is not None:
            _registry.register(pool, pool_quarantine, auto=True, keep=True)


def _registering_connect(connect: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(connect)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        connect(self, *args, **kwargs)
        if _enabled:
            _register(self)

    return wrapper


def _on_import(module: Any) -> None:
    if not _enabled:
        return
    _patches.patch(module.BaseDatabaseWrapper, "connect", _registering_connect)


def _register_connected() -> None:
    """Register the wrappers of this thread that are connected already
    (none can be before Django's backends are imported)."""
    if "django.db.backends.base.base" in sys.modules:
        for wrapper in sys.modules["django.db"].connections.all(initialized_only=True):
            _register(wrapper)


# -- public API ---------------------------------------------------------------------


def enable() -> None:
    """Give every forked child database connections of its own, leaving the
    parent's to the parent.

    Idempotent. Django imported later is covered from its import on; see
    the module's description for wrappers connected before :func:`enable`.

    .. versionadded:: 0.1
    """
    global _enabled
    _enabled = True
    _pass.ensure()
    when_imported("django.db.backends.base.base", _on_import)
    _register_connected()


def disable() -> None:
    """Undo :func:`enable`: remove its wrapper of ``connect`` and forget the
    connections it found. Idempotent.

    .. versionadded:: 0.1
    """
    global _enabled
    _enabled = False
    _patches.unpatch()
    _registry.forget_auto()
    _pass.remove()


def is_enabled() -> bool:
    """Whether :func:`enable` is in effect.

    .. versionadded:: 0.1
    """
    return _enabled
