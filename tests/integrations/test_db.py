"""The db integration's API: enable, disable, is_enabled, track and
InheritedConnectionError, and what a child sees of tracked objects."""

from __future__ import annotations

import gc
import sqlite3
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from db_servers import PG, load, require, scenario

import atfork.integrations
from atfork._registry import registry
from atfork.integrations import PRIORITY_DB, db
from atfork.integrations.db import _quarantine
from atfork.testing import run_in_child, run_python


@pytest.fixture(autouse=True)
def _db_off() -> Iterator[None]:
    """Each test starts and ends with the integration off and nothing tracked."""
    db.disable()
    _quarantine._entries.clear()
    yield
    db.disable()
    _quarantine._entries.clear()


def test_db_is_a_builtin_integration() -> None:
    """``db`` is listed and enabled by name like every built-in."""
    assert "db" in atfork.integrations.BUILTIN
    assert "db" in atfork.integrations.available()
    assert atfork.integrations.get("db") is db  # type: ignore[comparison-overlap]
    atfork.integrations.enable("db")
    assert db.is_enabled()


def test_enable_and_disable_are_idempotent() -> None:
    """enable() and disable() may be called any number of times."""
    assert not db.is_enabled()
    db.enable()
    db.enable()
    assert db.is_enabled()
    db.disable()
    db.disable()
    assert not db.is_enabled()


def test_enable_registers_one_hook_at_the_db_priority() -> None:
    """The fork hook is registered once, through atfork.atfork(), with
    PRIORITY_DB."""
    db.enable()
    db.enable(drivers=["redis"])
    hooks = [h for h in registry.hooks() if "atfork.integrations.db" in repr(h)]
    assert 1 == len(hooks)
    assert f"priority={PRIORITY_DB}" in repr(hooks[0])
    db.disable()
    assert not any("atfork.integrations.db" in repr(h) for h in registry.hooks())


@pytest.mark.parametrize(
    ("drivers", "error", "message"),
    [
        ("redis", TypeError, "iterable of names, not str"),
        (42, TypeError, "iterable of names, not int"),
        ([b"redis"], TypeError, "strings, not bytes"),
        (["redis", "mongodb"], ValueError, "unknown drivers ['mongodb']; known: psycopg"),
    ],
)
def test_enable_validates_drivers(drivers: Any, error: type[Exception], message: str) -> None:
    """A bad ``drivers`` option fails at once with a clear message."""
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        db.enable(drivers=drivers)
    assert not db.is_enabled()


def test_enable_takes_keyword_options_only() -> None:
    """Options are keyword-only; an unknown one is a TypeError."""
    enable: Any = db.enable  # the calls below are wrong on purpose
    with pytest.raises(TypeError):
        enable(["redis"])
    with pytest.raises(TypeError):
        enable(colour="blue")


def test_enable_imports_no_driver() -> None:
    """enable() imports none of the libraries it covers; it acts on their
    import, and disable() undoes what it did then."""
    run = run_python(
        "import sys\n"
        "from atfork.integrations import db\n"
        "db.enable()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in db.DRIVERS))\n"
    )
    assert (0, "[]") == (run.returncode, run.stdout.strip()), run.stderr


PATCHES = """
import sys
from atfork.integrations import db
def state():
    import psycopg, psycopg2, psycopg_pool, pymysql, redis, sqlalchemy
    from sqlalchemy import event
    from sqlalchemy.pool import Pool
    return [
        getattr(psycopg2.connect, "__atfork_db__", False),
        getattr(psycopg.BaseConnection.__init__, "__atfork_db__", False),
        getattr(psycopg_pool.ConnectionPool.__init__, "__atfork_db__", False),
        getattr(pymysql.connections.Connection.__init__, "__atfork_db__", False),
        getattr(redis.connection.AbstractConnection.__init__, "__atfork_db__", False),
        any(event.contains(Pool, "connect", f) for f in db._sqlalchemy._listeners),
    ]
db.enable()
enabled = state()
db.disable()
disabled = state()
db.enable(drivers=["redis"])
print(enabled, disabled, state())
"""


def test_enable_wraps_on_import_and_disable_unwraps() -> None:
    """Each driver imported after enable() is covered; disable() restores
    every original; enable(drivers=...) covers just those."""
    require(None, "psycopg", "psycopg2", "psycopg_pool", "pymysql", "redis", "sqlalchemy")
    run = run_python(PATCHES)
    assert 0 == run.returncode, run.stderr
    expected = [[True] * 6, [False] * 6, [False, False, False, False, True, False]]
    assert str(expected).replace("], [", "] [")[1:-1] == run.stdout.strip()


def test_track_returns_its_argument_and_holds_it_weakly() -> None:
    """track() returns the object and does not keep it alive."""
    require("postgresql", "sqlalchemy", "psycopg2")
    sqlalchemy = load("sqlalchemy")
    engine = sqlalchemy.create_engine("postgresql+psycopg2://", connect_args=PG)
    assert engine is db.track(engine)
    ref = weakref.ref(engine)
    del engine
    gc.collect()
    assert ref() is None


def test_track_rejects_other_objects() -> None:
    """track() of anything it cannot quarantine is a TypeError naming the type."""
    with pytest.raises(TypeError, match=r"takes a sqlite3, .* not builtins\.object"):
        db.track(object())
    with pytest.raises(TypeError, match=r"not pathlib\."):
        db.track(Path())


def test_inherited_connection_error_is_a_runtime_error() -> None:
    """InheritedConnectionError is a RuntimeError shown under its public name."""
    assert issubclass(db.InheritedConnectionError, RuntimeError)
    assert "atfork.integrations.db" == db.InheritedConnectionError.__module__


def test_tracked_psycopg2_connection_in_child_without_enable() -> None:
    """track() alone covers a connection: the child's conn.cursor() raises a
    clear InheritedConnectionError, and the parent keeps its session."""
    require("postgresql", "psycopg2")
    psycopg2 = load("psycopg2")
    conn = db.track(psycopg2.connect(**PG))
    try:
        cur = conn.cursor()
        cur.execute("select pg_backend_pid()")
        session = cur.fetchone()[0]

        def child() -> str:
            try:
                conn.cursor()
            except db.InheritedConnectionError as exc:
                conn.close()  # harmless now
                return str(exc)
            return "no error"

        message = run_in_child(child)
        assert message.startswith("psycopg2.extensions.connection.cursor(): process ")
        assert "inherited this connection from its parent through fork()" in message
        assert "Open a new connection in the child" in message
        cur = conn.cursor()
        cur.execute("select pg_backend_pid()")
        assert session == cur.fetchone()[0]
    finally:
        conn.close()


def test_checked_out_sqlalchemy_connection_in_child() -> None:
    """A SQLAlchemy Connection checked out across the fork raises in the
    child, while the engine hands the child a fresh connection; the parent's
    transaction goes on."""
    require("postgresql", "sqlalchemy", "psycopg")
    sa = load("sqlalchemy")
    db.enable()
    engine = sa.create_engine("postgresql+psycopg://", connect_args=PG)
    select_pid = sa.text("select pg_backend_pid()")
    try:
        with engine.begin() as conn:
            session = conn.execute(select_pid).scalar()

            def child() -> tuple[str, bool]:
                try:
                    conn.execute(select_pid)
                    used = "worked"
                except sa.exc.StatementError as exc:  # SQLAlchemy wraps it
                    used = type(exc.orig).__name__
                with engine.connect() as fresh:
                    own = fresh.execute(select_pid).scalar() != session
                engine.dispose()
                return used, own

            assert ("InheritedConnectionError", True) == run_in_child(child)
            assert session == conn.execute(select_pid).scalar()
    finally:
        engine.dispose()


def test_disable_stops_quarantining() -> None:
    """After disable(), connections found by enable() are no longer
    quarantined in children; tracked ones still are."""
    require("postgresql", "psycopg")
    psycopg = load("psycopg")
    db.enable()
    found = psycopg.connect(**PG)
    tracked = db.track(psycopg.connect(**PG))
    db.disable()
    try:

        def child() -> tuple[str, str]:
            return type(found).__name__, type(tracked).__name__

        assert ("Connection", "InheritedConnection") == run_in_child(child)
    finally:
        found.close()
        tracked.close()


def test_closed_sqlite_connection_is_released(tmp_path: Path) -> None:
    """A tracked sqlite3 connection (held strongly: it has no weak
    references) is released at the first fork after it was closed."""
    conn = db.track(sqlite3.connect(tmp_path / "t.db"))
    ref_count = len(gc.get_referrers(conn))
    conn.close()
    run_in_child(int)
    assert len(gc.get_referrers(conn)) < ref_count


def test_grandchild_quarantines_the_childs_connections() -> None:
    """A child's own connections are quarantined in its children in turn,
    and each generation gets fresh connections from the engine."""
    require("postgresql", "sqlalchemy", "psycopg2")
    sa = load("sqlalchemy")
    db.enable()
    engine = sa.create_engine("postgresql+psycopg2://", connect_args=PG)
    select_pid = sa.text("select pg_backend_pid()")
    try:
        with engine.connect() as c:
            parent = c.execute(select_pid).scalar()

        def grandchild() -> Any:
            with engine.connect() as c:
                session = c.execute(select_pid).scalar()
            engine.dispose()
            return session

        def child() -> tuple[Any, Any, Any]:
            with engine.connect() as c:
                own = c.execute(select_pid).scalar()
            below = run_in_child(grandchild)
            with engine.connect() as c:
                again = c.execute(select_pid).scalar()
            engine.dispose()
            return own, below, again

        own, below, again = run_in_child(child)
        assert len({parent, own, below}) == 3
        assert own == again
        with engine.connect() as c:
            assert parent == c.execute(select_pid).scalar()
    finally:
        engine.dispose()


def _engine_case() -> tuple[Any, Any, Any]:
    sa = load("sqlalchemy")
    engine = sa.create_engine("postgresql+psycopg2://", connect_args=PG)
    select_pid = sa.text("select pg_backend_pid()")

    def session() -> Any:
        with engine.connect() as c:
            return c.execute(select_pid).scalar()

    return engine, session, engine.dispose


def _pool_case() -> tuple[Any, Any, Any]:
    psycopg_pool = load("psycopg_pool")
    conninfo = " ".join(f"{k}={v}" for k, v in PG.items() if v != "")
    # One connection: the parent's session is always the same one.
    pool = psycopg_pool.ConnectionPool(conninfo, min_size=1, max_size=1, open=True, timeout=5)
    pool.wait()

    def session() -> Any:
        with pool.connection() as c:
            return c.execute("select pg_backend_pid()").fetchone()[0]

    return pool, session, pool.close


@pytest.mark.parametrize(
    ("case", "modules"),
    [(_engine_case, ("sqlalchemy", "psycopg2")), (_pool_case, ("psycopg_pool",))],
    ids=["engine", "psycopg_pool"],
)
def test_tracked_engine_or_pool_without_enable(case: Any, modules: tuple[str, ...]) -> None:
    """track() alone, on an engine or a pool that already holds an idle
    connection, gives the child its own sessions and leaves the parent's."""
    require("postgresql", *modules)
    target, session, close = case()
    try:
        parent = session()
        db.track(target)

        def child() -> bool:
            own: bool = session() != parent
            close()
            return own

        assert run_in_child(child)
        assert parent == session()
    finally:
        close()


TRACKED_PUBSUB = """
import redis
pubsub = db.track(redis.Redis(**REDIS).pubsub())
pubsub.subscribe("atfork-tracked")

def child(send):
    try:
        pubsub.get_message(timeout=0.1)
    except db.InheritedConnectionError:
        return "InheritedConnectionError"
    return "read the parent's socket"

code, child_result = join(*fork(child))
report({"child": child_result, "parent": pubsub.get_message(timeout=2)["type"]})
"""


def test_tracked_pubsub_without_enable() -> None:
    """track() alone covers a PubSub's connection.

    In a fresh interpreter, as every redis test here: see ``require``.
    """
    require("redis", "redis")
    # atfork=False: the prelude does not call enable(); the body tracks.
    result = scenario(TRACKED_PUBSUB, atfork=False)
    assert {"child": "InheritedConnectionError", "parent": "subscribe"} == result
