"""Django's ORM connections across fork, reproduced without atfork and fixed
with ``atfork.integrations.django``, on real servers (see ``db_servers``).

Every scenario runs twice in fresh interpreters, Django configured in
process with ``settings.configure()``: the run without atfork must show
the real failure, so that these tests can fail. Only the django
integration is enabled (not the db one).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

import pytest
from db_servers import MYSQL, PG, require, scenario
from free_threading import INTERPRETER_SKIP

import atfork
import atfork.testing
from atfork.integrations import PRIORITY_DJANGO, django

INTEGRATIONS = ("django",)

SETUP = """
DATABASE = {database!r}
SESSION = {session!r}
if DATABASE["ENGINE"].endswith("mysql"):
    import pymysql
    pymysql.install_as_MySQLdb()
if {hide_psycopg!r}:
    sys.modules["psycopg"] = None  # Django's PostgreSQL backend then takes psycopg2
import django
from django.conf import settings
settings.configure(DATABASES={{"default": DATABASE}}, USE_TZ=True)
django.setup()
from django.db import connection, connections, transaction


def session():
    with connection.cursor() as cursor:
        cursor.execute(SESSION)
        return cursor.fetchone()[0]

"""

CLOSE_ALL = """
parent_session = session()
parent_driver = type(connection.connection).__module__.split(".")[0]

def child(send):
    try:
        used = "parent's session" if session() == parent_session else "own session"
    except Exception as exc:
        used = error_name(exc)
    # Sent first: without atfork, a child of the pool's scenario can hang in
    # close_all() (on 3.14t, a pool worker held the pool's lock at the fork;
    # the alarm ends it), and which session it used is the finding.
    send(used)
    connections.close_all()

code, child_used = join(*fork(child))
try:
    after = session()
    parent = "same session" if after == parent_session else "another session"
except Exception as exc:
    parent = error_name(exc) + ": " + str(exc).splitlines()[0]
report({"child": child_used, "parent": parent, "driver": parent_driver, "exit": code})
"""

PG_SESSION = "select pg_backend_pid()"
MYSQL_SESSION = "select connection_id()"
CLOSE_ERRORS = {
    "postgresql": "server closed the connection unexpectedly",
    "mysql": "(2013, 'Lost connection to MySQL server during query",
}


def _pg(**options: Any) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": PG["dbname"],
        "USER": PG["user"],
        "PASSWORD": PG["password"],
        "HOST": PG["host"],
        "PORT": PG["port"],
        "OPTIONS": options,
    }


MYSQL_DATABASE = {
    "ENGINE": "django.db.backends.mysql",
    "NAME": MYSQL["database"],
    "USER": MYSQL["user"],
    "PASSWORD": MYSQL["password"],
    "HOST": MYSQL["host"],
    "PORT": MYSQL["port"],
}


def _django_scenario(
    body: str,
    database: dict[str, Any],
    session: str,
    *,
    atfork: bool,
    hide_psycopg: bool = False,
    integrations: tuple[str, ...] = INTEGRATIONS,
) -> dict[str, Any]:
    setup = SETUP.format(database=database, session=session, hide_psycopg=hide_psycopg)
    return scenario(setup + body, atfork=atfork, integrations=integrations)


def _django_version() -> tuple[int, ...]:
    if importlib.util.find_spec("django") is None:
        return (0,)
    return tuple(int(p) for p in importlib.metadata.version("django").split(".")[:2])


def _require_pool() -> None:
    """Skip unless the installed Django has its connection pool (5.1+)."""
    if _django_version() < (5, 1):
        version = ".".join(map(str, _django_version()))
        pytest.skip(
            f"{INTERPRETER_SKIP}pip gives this Python Django {version}, "
            "and Django's connection pool came in 5.1"
        )


# -- the integration's registration ----------------------------------------------


def test_builtin_name() -> None:
    """The name "django" is a built-in integration name."""
    assert "django" in atfork.integrations.BUILTIN
    assert "django" in atfork.integrations.available()


def test_enable_registers_one_hook_and_disable_removes_it() -> None:
    """enable() registers one hook at PRIORITY_DJANGO, idempotently;
    disable() removes it."""
    try:
        django.enable()
        django.enable()
        assert django.is_enabled()
        hooks = [h for h in atfork.hooks() if h.name == "atfork.integrations.django"]
        assert 1 == len(hooks)
        assert f"priority={PRIORITY_DJANGO}" in repr(hooks[0])
    finally:
        django.disable()
        django.disable()
    assert not django.is_enabled()
    assert [] == [h for h in atfork.hooks() if h.name == "atfork.integrations.django"]


def test_enable_imports_nothing() -> None:
    """enable() does not import Django."""
    code = (
        "import sys\n"
        "from atfork.integrations import django\n"
        "django.enable()\n"
        "print(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')))\n"
    )
    run = atfork.testing.run_python(code, timeout=30)
    assert 0 == run.returncode, run.stderr
    assert "[]" == run.stdout.strip()


# -- PostgreSQL, MariaDB: the child's query and its close_all() ---------------------


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_postgresql_child_gets_its_own_session(driver: str) -> None:
    """A child's ORM query (psycopg 3, psycopg2) no longer runs on the
    parent's PostgreSQL backend, and its connections.close_all() no longer
    ends the parent's session."""
    require("postgresql", "django", driver)
    hide = driver == "psycopg2"
    database = _pg()
    without = _django_scenario(CLOSE_ALL, database, PG_SESSION, atfork=False, hide_psycopg=hide)
    assert driver == without["driver"]
    assert "parent's session" == without["child"]
    assert without["parent"].startswith("OperationalError: ")
    assert CLOSE_ERRORS["postgresql"] in without["parent"]
    with_atfork = _django_scenario(CLOSE_ALL, database, PG_SESSION, atfork=True, hide_psycopg=hide)
    assert {"child": "own session", "parent": "same session", "driver": driver, "exit": 0} == (
        with_atfork
    )


def test_mysql_child_gets_its_own_session() -> None:
    """A child's ORM query on MariaDB (PyMySQL as MySQLdb) no longer runs on
    the parent's connection, and its connections.close_all() no longer ends
    the parent's session."""
    require("mysql", "django", "pymysql")
    without = _django_scenario(CLOSE_ALL, MYSQL_DATABASE, MYSQL_SESSION, atfork=False)
    assert "parent's session" == without["child"]
    assert without["parent"].startswith("OperationalError: ")
    assert CLOSE_ERRORS["mysql"] in without["parent"]
    assert {"child": "own session", "parent": "same session", "driver": "pymysql", "exit": 0} == (
        _django_scenario(CLOSE_ALL, MYSQL_DATABASE, MYSQL_SESSION, atfork=True)
    )


def test_postgresql_pool_child_gets_its_own_session() -> None:
    """With Django 5.1+'s connection pool, a child's query no longer runs on
    the parent's pooled session; the parent's keeps working."""
    _require_pool()
    require("postgresql", "django", "psycopg", "psycopg_pool")
    database = _pg(pool={"min_size": 1, "max_size": 2, "timeout": 5})
    body = "import warnings\nwarnings.simplefilter('ignore', RuntimeWarning)\n" + CLOSE_ALL
    without = _django_scenario(body, database, PG_SESSION, atfork=False)
    assert {"child": "parent's session", "parent": "same session"} == {
        k: without[k] for k in ("child", "parent")
    }
    assert {"child": "own session", "parent": "same session", "driver": "psycopg", "exit": 0} == (
        _django_scenario(body, database, PG_SESSION, atfork=True)
    )


ATOMIC = """
parent_session = session()

def child(send):
    result = {}
    try:
        session()
        result["inside"] = "worked"
    except Exception as exc:
        result["inside"] = error_name(exc)
    return result

with transaction.atomic():
    session()
    code, child_result = join(*fork(child))
    try:
        parent = "same session" if session() == parent_session else "another session"
    except Exception as exc:
        parent = error_name(exc)
report({"child": child_result, "parent": parent})
"""


def test_postgresql_child_inside_atomic_block() -> None:
    """A child forked inside the parent's atomic block cannot query in it
    (its transaction is the parent's), and the parent's block goes on on
    its own session."""
    require("postgresql", "django", "psycopg")
    database = _pg()
    without = _django_scenario(ATOMIC, database, PG_SESSION, atfork=False)
    assert {"inside": "worked"} == without["child"]
    assert {"child": {"inside": "InheritedConnectionError"}, "parent": "same session"} == (
        _django_scenario(ATOMIC, database, PG_SESSION, atfork=True)
    )


OTHER_THREAD = """
import threading
connected, go, result = threading.Event(), threading.Event(), {}

def worker():
    result["first"] = session()
    connected.set()
    go.wait()
    try:
        result["after"] = "same session" if session() == result["first"] else "another session"
    except Exception as exc:
        result["after"] = error_name(exc)

thread = threading.Thread(target=worker)
thread.start()
connected.wait(10)

def child(send):
    connections.close_all()  # the forking thread's wrappers only
    gc.collect()

code, _ = join(*fork(child))
go.set()
thread.join(10)
report({"worker": result["after"]})
"""


@pytest.mark.parametrize("atfork", [False, True])
def test_other_threads_connections_are_safe_either_way(atfork: bool) -> None:
    """A connection another thread of the parent holds is out of the child's
    reach (Django's connections are per thread) and its finalisation there
    sends nothing: that thread's session survives, with or without atfork."""
    require("postgresql", "django", "psycopg")
    assert {"worker": "same session"} == _django_scenario(
        OTHER_THREAD, _pg(), PG_SESSION, atfork=atfork
    )


GRANDCHILD = """
import warnings
warnings.simplefilter("ignore", RuntimeWarning)
parent_session = session()

def grandchild(send):
    theirs = session()
    connections.close_all()
    return theirs

def child(send):
    mine = session()
    code, theirs = join(*fork(grandchild))
    after = session()
    connections.close_all()
    return {
        "child": "own" if mine != parent_session else "parent's",
        "grandchild": "own" if theirs not in (parent_session, mine) else "inherited",
        "child after": "same" if after == mine else "another",
    }

code, result = join(*fork(child))
result["parent after"] = "same" if session() == parent_session else "another"
report(result)
"""


@pytest.mark.parametrize("pool", [False, True], ids=["plain", "pool"])
@pytest.mark.parametrize("integrations", [("django",), ("db", "django")], ids=["django", "both"])
def test_grandchild_and_the_db_integration_too(pool: bool, integrations: tuple[str, ...]) -> None:
    """A child's own connection (or pool) is repaired again in its child, and
    enabling the db integration as well changes nothing: each process gets a
    session of its own, and each parent keeps its own."""
    if pool:
        _require_pool()
    require("postgresql", "django", "psycopg", *(["psycopg_pool"] if pool else []))
    database = _pg(pool={"min_size": 1, "max_size": 2, "timeout": 5}) if pool else _pg()
    assert {"child": "own", "grandchild": "own", "child after": "same", "parent after": "same"} == (
        _django_scenario(GRANDCHILD, database, PG_SESSION, atfork=True, integrations=integrations)
    )


# -- SQLite: the parent's transaction -------------------------------------------

SQLITE = """
import tempfile
CHILD = {child!r}

with connection.cursor() as cursor:
    cursor.execute("create table t (x integer)")
parent_connection = id(connection.connection)

def count():
    with connection.cursor() as cursor:
        cursor.execute("select count(*) from t")
        return cursor.fetchone()[0]

def child(send):
    result = {{}}
    if CHILD == "query":
        try:
            result["inside"] = count()
        except Exception as exc:
            result["inside"] = error_name(exc)
    send(result)
    sys.exit(0)  # leaves the atomic block (SystemExit), then the interpreter's shutdown

try:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("insert into t values (1)")  # the parent is inside a transaction
        code, child_result = join(*fork(child))
    parent = count()
except Exception as exc:
    parent = error_name(exc) + ": " + str(exc)
report({{"child": child_result, "parent": parent}})
"""


def _sqlite(tmp_path: Any, atfork: bool) -> dict[str, Any]:
    name = tmp_path / ("with-atfork.db" if atfork else "without.db")
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(name)}


def test_sqlite_child_exit_leaves_parent_transaction_alone(tmp_path: Any) -> None:
    """A child forked inside the parent's atomic block that exits (leaving
    the block on its way) no longer makes the parent's COMMIT fail."""
    require(None, "django")
    body = SQLITE.format(child="exit")
    without = _django_scenario(body, _sqlite(tmp_path, False), "select 1", atfork=False)
    assert {"child": {}, "parent": "OperationalError: disk I/O error"} == without
    with_atfork = _django_scenario(body, _sqlite(tmp_path, True), "select 1", atfork=True)
    assert {"child": {}, "parent": 1} == with_atfork


def test_sqlite_child_query_leaves_parent_transaction_alone(tmp_path: Any) -> None:
    """A child's query inside the inherited atomic block no longer runs in
    the parent's transaction (Django refuses it, as after a close() in the
    block), and the parent's COMMIT works."""
    require(None, "django")
    body = SQLITE.format(child="query")
    without = _django_scenario(body, _sqlite(tmp_path, False), "select 1", atfork=False)
    assert {"child": {"inside": 1}, "parent": "OperationalError: disk I/O error"} == without
    with_atfork = _django_scenario(body, _sqlite(tmp_path, True), "select 1", atfork=True)
    assert {"child": {"inside": "TransactionManagementError"}, "parent": 1} == with_atfork


SQLITE_OUTSIDE = """
with connection.cursor() as cursor:
    cursor.execute("create table t (x integer)")
parent_connection = id(connection.connection)

def child(send):
    with connection.cursor() as cursor:
        cursor.execute("insert into t values (2)")
    own = id(connection.connection) != parent_connection
    connections.close_all()
    return "own connection" if own else "parent's connection"

code, child_result = join(*fork(child))
with transaction.atomic():
    with connection.cursor() as cursor:
        cursor.execute("insert into t values (1)")
with connection.cursor() as cursor:
    cursor.execute("select count(*) from t")
    rows = cursor.fetchone()[0]
report({"child": child_result, "rows": rows})
"""


def test_sqlite_child_connects_afresh(tmp_path: Any) -> None:
    """Outside an atomic block a child's query opens an SQLite connection of
    its own; the parent's keeps working."""
    require(None, "django")
    without = _django_scenario(SQLITE_OUTSIDE, _sqlite(tmp_path, False), "select 1", atfork=False)
    assert {"child": "parent's connection", "rows": 2} == without
    with_atfork = _django_scenario(SQLITE_OUTSIDE, _sqlite(tmp_path, True), "select 1", atfork=True)
    assert {"child": "own connection", "rows": 2} == with_atfork
