"""Each fork failure of database drivers, reproduced without atfork and
gone with ``atfork.integrations.db``, on real servers.

Every scenario runs twice in fresh interpreters (see ``db_servers``): the
run without atfork must show the driver's real failure, so that these tests
can fail.
"""

from __future__ import annotations

import pytest
from db_servers import require, scenario

PG_DRIVERS = ["psycopg2", "psycopg"]
INHERITED = "InheritedConnectionError"

CLOSE = """
conn = {connect}
parent_session = query(conn, "{session}")[0]

def child(send):
    try:
        query(conn, "select 1")
        used = "worked"
    except Exception as exc:
        used = error_name(exc)
    conn.close()
    return used

code, child_used = join(*fork(child))
try:
    after = query(conn, "{session}")[0]
    parent = "same session" if after == parent_session else "another session"
except Exception as exc:
    parent = error_name(exc) + ": " + str(exc).splitlines()[0]
report({{"child used it": child_used, "parent": parent}})
"""

CLOSERS = {
    "psycopg2": ("postgresql", "pg_connect('psycopg2')", "select pg_backend_pid()"),
    "psycopg": ("postgresql", "pg_connect('psycopg')", "select pg_backend_pid()"),
    "pymysql": ("mysql", "__import__('pymysql').connect(**MYSQL)", "select connection_id()"),
}
CLOSE_ERRORS = {
    "postgresql": "server closed the connection unexpectedly",
    # Sometimes followed by the socket's error: "... query ([Errno 104] ...)".
    "mysql": "(2013, 'Lost connection to MySQL server during query",
}


@pytest.mark.parametrize("driver", list(CLOSERS))
def test_child_close_leaves_parent_session_alive(driver: str) -> None:
    """A child closing an inherited connection (psycopg2, psycopg, PyMySQL)
    no longer ends the parent's server session; using it raises
    InheritedConnectionError."""
    server, connect, session = CLOSERS[driver]
    require(server, driver)
    body = CLOSE.format(connect=connect, session=session)
    without = scenario(body, atfork=False)
    assert "worked" == without["child used it"]
    assert without["parent"].startswith("OperationalError: ")
    assert CLOSE_ERRORS[server] in without["parent"]
    assert {"child used it": INHERITED, "parent": "same session"} == scenario(body, atfork=True)


CROSSED = """
conn = pg_connect({driver!r})
watcher = pg_connect({driver!r})  # a session of its own, to watch the server
failed_r, failed_w = os.pipe()
# The child's query carries this run's token in its text (a literal: a bound
# parameter would show as $1): another run's on the same server, from a test
# environment running alongside, is not this one's.
TOKEN = "crossed-%d" % os.getpid()

def child(send):
    try:
        # Blocks reading the reply; the parent stops this child meanwhile.
        return query(conn, "select 'child', pg_sleep(0.5), '" + TOKEN + "'")[0]
    except Exception as exc:
        os.write(failed_w, b"1")
        return error_name(exc)

pid, read = fork(child)
# Wait until the server runs the child's query (it is on the wire, and the
# child reads the socket for its reply) or the child's query failed.
deadline = time.monotonic() + 10
while not select.select([failed_r], [], [], 0.01)[0]:
    if query(watcher, ACTIVE, ("%" + TOKEN + "%",))[0] or time.monotonic() > deadline:
        break
os.kill(pid, signal.SIGSTOP)  # only the parent reads the socket from now on
try:
    parent = query(conn, "select 'parent'")[0]
except Exception as exc:
    parent = error_name(exc)
os.kill(pid, signal.SIGCONT if ATFORK else signal.SIGKILL)
code, child_result = join(pid, read)
report({{"parent got": parent, "child got": child_result}})
"""
# The server's view of the child's query: it runs on the parent's backend,
# and its text (the run's token) tells it apart.
ACTIVE = (
    "select count(*) from pg_stat_activity "
    "where state = 'active' and query like %s and pid != pg_backend_pid()"
)


@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_parent_never_reads_the_childs_rows(driver: str) -> None:
    """Parent and child querying one connection at once: without atfork the
    parent's query returns the child's row; with it, the child's query
    raises and the parent gets its own."""
    require("postgresql", driver)
    body = f"import select\nACTIVE = {ACTIVE!r}\n" + CROSSED.format(driver=driver)
    assert "child" == scenario(body, atfork=False)["parent got"]
    assert {"parent got": "parent", "child got": INHERITED} == scenario(body, atfork=True)


SQLALCHEMY = """
import sqlalchemy as sa
ACTION = {action!r}
engine = sa.create_engine(pg_url({driver!r}))
select_pid = sa.text("select pg_backend_pid()")
with engine.connect() as c:
    parent_session = c.execute(select_pid).scalar()

def child(send):
    with engine.connect() as c:
        child_session = c.execute(select_pid).scalar()
    if ACTION == "dispose":
        engine.dispose()
    return "parent's session" if child_session == parent_session else "own session"

code, child_result = join(*fork(child))
try:
    with engine.connect() as c:
        after = c.execute(select_pid).scalar()
    parent = "same session" if after == parent_session else "another session"
except Exception as exc:
    parent = error_name(exc)
report({{"child": child_result, "parent": parent}})
"""


@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_sqlalchemy_child_gets_its_own_connections(driver: str) -> None:
    """A child's engine.connect() no longer hands out the parent's pooled
    connection (same server session)."""
    require("postgresql", "sqlalchemy", driver)
    body = SQLALCHEMY.format(driver=driver, action="connect")
    assert {"child": "parent's session", "parent": "same session"} == scenario(body, atfork=False)
    assert {"child": "own session", "parent": "same session"} == scenario(body, atfork=True)


@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_sqlalchemy_dispose_in_child_leaves_parent_alone(driver: str) -> None:
    """engine.dispose() in a child no longer closes the parent's pooled
    connections."""
    require("postgresql", "sqlalchemy", driver)
    body = SQLALCHEMY.format(driver=driver, action="dispose")
    assert {"child": "parent's session", "parent": "OperationalError"} == scenario(
        body, atfork=False
    )
    assert {"child": "own session", "parent": "same session"} == scenario(body, atfork=True)


PSYCOPG_POOL = """
import psycopg_pool
pool = psycopg_pool.ConnectionPool(pg_conninfo(), min_size=1, max_size=2, open=True, timeout=2)
pool.wait()
with pool.connection() as c:
    parent_session = c.execute("select pg_backend_pid()").fetchone()[0]

def child(send):
    first = pool.getconn()
    session = first.execute("select pg_backend_pid()").fetchone()[0]
    result = {"first": "parent's session" if session == parent_session else "own session"}
    try:
        second = pool.getconn()
        result["second"] = second.execute("select 'ok'").fetchone()[0]
    except Exception as exc:
        result["second"] = error_name(exc)
    pool.close()
    return result

code, child_result = join(*fork(child))
with pool.connection() as c:
    after = c.execute("select pg_backend_pid()").fetchone()[0]
report({"child": child_result, "parent": "same session" if after == parent_session else "other"})
pool.close()
"""


def test_psycopg_pool_child_gets_a_pool_of_its_own() -> None:
    """An inherited psycopg_pool pool no longer gives the child the parent's
    session and then times out: it hands out the child's own connections."""
    require("postgresql", "psycopg_pool")
    assert {
        "child": {"first": "parent's session", "second": "PoolTimeout"},
        "parent": "same session",
    } == scenario(PSYCOPG_POOL, atfork=False)
    assert {
        "child": {"first": "own session", "second": "ok"},
        "parent": "same session",
    } == scenario(PSYCOPG_POOL, atfork=True)


REDIS_CONNECTION = """
import redis
conn = redis.Connection(**REDIS)
conn.connect()

def child(send):
    try:
        conn.send_command("ECHO", "child")  # and exits without reading
        return "sent"
    except Exception as exc:
        return error_name(exc)

code, child_result = join(*fork(child))
conn.send_command("ECHO", "parent")
report({"child": child_result, "parent got": conn.read_response().decode()})
"""


def test_redis_connection_parent_gets_its_own_reply() -> None:
    """A raw redis-py Connection used by a child no longer hands the parent
    the child's reply."""
    require("redis", "redis")
    assert {"child": "sent", "parent got": "child"} == scenario(REDIS_CONNECTION, atfork=False)
    assert {"child": INHERITED, "parent got": "parent"} == scenario(REDIS_CONNECTION, atfork=True)


REDIS_PUBSUB = """
import redis
client = redis.Redis(**REDIS)
channel = "atfork-test-%d" % os.getpid()
pubsub = client.pubsub()
pubsub.subscribe(channel)
pubsub.get_message(timeout=2)  # the subscribe confirmation
started_r, started_w = os.pipe()

def child(send):
    os.write(started_w, b"1")
    try:
        message = pubsub.get_message(timeout=2)
        return message and message["data"].decode()
    except Exception as exc:
        return error_name(exc)

pid, read = fork(child)
os.read(started_r, 1)  # the message waits in the socket for whoever reads it first
redis.Redis(**REDIS).publish(channel, "hello")
code, child_result = join(pid, read)
message = pubsub.get_message(timeout=2)
report({"child got": child_result, "parent got": message and message["data"].decode()})
"""


def test_redis_pubsub_child_does_not_steal_messages() -> None:
    """A PubSub used by a child no longer takes the parent's message."""
    require("redis", "redis")
    assert {"child got": "hello", "parent got": None} == scenario(REDIS_PUBSUB, atfork=False)
    assert {"child got": INHERITED, "parent got": "hello"} == scenario(REDIS_PUBSUB, atfork=True)


REDIS_POOLED = """
import redis
client = redis.Redis(**REDIS)
parent_id = client.client_id()

def child(send):
    return "own connection" if client.client_id() != parent_id else "parent's connection"

code, child_result = join(*fork(child))
report({"child": child_result, "parent": client.client_id() == parent_id})
"""


@pytest.mark.parametrize("atfork", [False, True])
def test_redis_pooled_client_is_safe_either_way(atfork: bool) -> None:
    """redis-py's pool checks the pid: a pooled client gives the child its
    own connection, with or without atfork."""
    require("redis", "redis")
    assert {"child": "own connection", "parent": True} == scenario(REDIS_POOLED, atfork=atfork)


SQLITE = """
import sqlite3, tempfile
path = os.path.join(tempfile.mkdtemp(), "test.db")
conn = sqlite3.connect(path)
conn.execute("create table t (x)")
conn.commit()
if ATFORK:
    db.track(conn)
conn.execute("insert into t values (1)")  # the parent is inside a transaction

def child(send):
    try:
        conn.execute("select count(*) from t").fetchone()
        used = "worked"
    except Exception as exc:
        used = error_name(exc) + ": " + str(exc)
    send(used)
    sys.exit(0)  # a normal exit: the interpreter's shutdown finalises conn

code, child_result = join(*fork(child))
try:
    conn.commit()
    parent = sqlite3.connect(path).execute("select count(*) from t").fetchone()[0]
except Exception as exc:
    parent = error_name(exc) + ": " + str(exc)
report({"child": child_result, "parent": parent})
"""


def test_sqlite_child_exit_leaves_parent_transaction_alone() -> None:
    """A child exiting while the parent is inside an SQLite transaction no
    longer makes the parent's COMMIT fail."""
    assert {"child": "worked", "parent": "OperationalError: disk I/O error"} == scenario(
        SQLITE, atfork=False
    )
    assert {"child": "DatabaseError: not authorized", "parent": 1} == scenario(SQLITE, atfork=True)
