"""The servers the integration tests use (the db integration's, and
Celery's broker), and a runner for scenarios.

Settings come from environment variables (tox passes ``ATFORK_*`` on):

========================  ==============  ===========================
variable                  default         what
========================  ==============  ===========================
``ATFORK_PG_HOST``        ``127.0.0.1``   PostgreSQL host
``ATFORK_PG_PORT``        ``5432``        PostgreSQL port
``ATFORK_PG_USER``        ``postgres``    PostgreSQL user
``ATFORK_PG_PASSWORD``    (empty)         PostgreSQL password
``ATFORK_PG_DATABASE``    ``test``        PostgreSQL database
``ATFORK_REDIS_HOST``     ``127.0.0.1``   Redis host
``ATFORK_REDIS_PORT``     ``6379``        Redis port
``ATFORK_MYSQL_HOST``     ``127.0.0.1``   MySQL or MariaDB host
``ATFORK_MYSQL_PORT``     ``3306``        MySQL or MariaDB port
``ATFORK_MYSQL_USER``     ``root``        MySQL user
``ATFORK_MYSQL_PASSWORD`` (empty)         MySQL password
``ATFORK_MYSQL_DATABASE`` ``test``        MySQL database
``ATFORK_AMQP_HOST``      ``127.0.0.1``   RabbitMQ host
``ATFORK_AMQP_PORT``      ``5672``        RabbitMQ port
``ATFORK_AMQP_USER``      ``guest``       RabbitMQ user
``ATFORK_AMQP_PASSWORD``  ``guest``       RabbitMQ password
========================  ==============  ===========================

A test whose server does not answer, or whose driver is not installed,
skips with the reason (and fails under ``ATFORK_NO_SKIP=1``, as in CI). On
the free-threaded build a test of psycopg2, which would enable the GIL,
skips as a test for another Python.

Each scenario runs in a fresh interpreter: a prelude (settings, helpers,
and, when asked, ``enable()`` of the db integration or of those named) and
then the scenario's code, which prints its findings with ``report()``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import socket
import textwrap
from typing import Any

import pytest
from free_threading import FREE_THREADED, NEEDS_GIL
from scenario_fork import FORK_HELPERS

from atfork.testing import run_python


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


PG: dict[str, Any] = {
    "host": _env("ATFORK_PG_HOST", "127.0.0.1"),
    "port": int(_env("ATFORK_PG_PORT", "5432")),
    "user": _env("ATFORK_PG_USER", "postgres"),
    "password": _env("ATFORK_PG_PASSWORD", ""),
    "dbname": _env("ATFORK_PG_DATABASE", "test"),
}
REDIS: dict[str, Any] = {
    "host": _env("ATFORK_REDIS_HOST", "127.0.0.1"),
    "port": int(_env("ATFORK_REDIS_PORT", "6379")),
}
MYSQL: dict[str, Any] = {
    "host": _env("ATFORK_MYSQL_HOST", "127.0.0.1"),
    "port": int(_env("ATFORK_MYSQL_PORT", "3306")),
    "user": _env("ATFORK_MYSQL_USER", "root"),
    "password": _env("ATFORK_MYSQL_PASSWORD", ""),
    "database": _env("ATFORK_MYSQL_DATABASE", "test"),
}
AMQP: dict[str, Any] = {
    "host": _env("ATFORK_AMQP_HOST", "127.0.0.1"),
    "port": int(_env("ATFORK_AMQP_PORT", "5672")),
    "user": _env("ATFORK_AMQP_USER", "guest"),
    "password": _env("ATFORK_AMQP_PASSWORD", "guest"),
}
SERVERS = {"postgresql": PG, "redis": REDIS, "mysql": MYSQL, "rabbitmq": AMQP}


def load(module: str) -> Any:
    """``module``, imported (untyped: the drivers need no stubs here)."""
    return importlib.import_module(module)


def require(server: str | None, *modules: str) -> None:
    """Skip unless every driver module is installed and ``server`` answers.

    The modules are looked up, not imported: redis-py imports
    concurrent.futures, whose before-fork hook takes a plain lock, and a
    fork started inside a prepare callback (a core test of this suite) would
    then wait for that lock forever.
    """
    for module in modules:
        if FREE_THREADED and module in NEEDS_GIL:
            pytest.skip(NEEDS_GIL[module])
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    if server is None:
        return
    settings = SERVERS[server]
    address = (str(settings["host"]), int(settings["port"]))
    try:
        socket.create_connection(address, timeout=3).close()
    except OSError as exc:
        pytest.skip(
            f"{server} at {address[0]}:{address[1]} does not answer ({exc}); "
            f"see tests/integrations/db_servers.py for the ATFORK_* settings"
        )


_PRELUDE = """\
import gc, json, os, signal, sys, time, warnings
# 3.12+ warns when a process with threads forks (psycopg_pool has workers).
warnings.simplefilter("ignore", DeprecationWarning)
from atfork.testing import wait_child
PG = {pg!r}
REDIS = {redis!r}
MYSQL = {mysql!r}
ATFORK = {atfork!r}
CHILD_ALARM = {child_alarm!r}
import atfork.integrations
from atfork.integrations import db
if ATFORK:
    atfork.integrations.enable(*{integrations!r})


{fork_helpers}

def error_name(exc):
    return type(exc).__name__


def pg_connect(driver):
    if driver == "psycopg2":
        import psycopg2
        conn = psycopg2.connect(**PG)
        conn.autocommit = True
        return conn
    import psycopg
    return psycopg.connect(**PG, autocommit=True)


def query(conn, sql, params=()):
    cur = conn.cursor()
    cur.execute(sql, params)
    return cur.fetchone()


def pg_url(driver):
    return "postgresql+{{}}://{{}}:{{}}@{{}}:{{}}/{{}}".format(
        driver, PG["user"], PG["password"], PG["host"], PG["port"], PG["dbname"])


def pg_conninfo():
    return " ".join("{{}}={{}}".format(k, v) for k, v in PG.items() if v != "")
"""


def source(
    body: str, *, atfork: bool, child_alarm: int = 20, integrations: tuple[str, ...] = ("db",)
) -> str:
    """The prelude and ``body``; a forked child is killed by SIGALRM after
    ``child_alarm`` seconds. With ``atfork``, the prelude enables the
    ``integrations``."""
    prelude = _PRELUDE.format(
        integrations=integrations,
        pg=PG,
        redis=REDIS,
        mysql=MYSQL,
        atfork=atfork,
        child_alarm=child_alarm,
        fork_helpers=FORK_HELPERS,
    )
    return prelude + textwrap.dedent(body)


def scenario(
    body: str, *, atfork: bool, timeout: float = 60.0, integrations: tuple[str, ...] = ("db",)
) -> dict[str, Any]:
    """Run ``body`` after the prelude in a fresh interpreter; its report."""
    run = run_python(source(body, atfork=atfork, integrations=integrations), timeout=timeout)
    assert not run.timed_out, f"the scenario hung:\n{run.stderr}"
    assert 0 == run.returncode, run.stderr
    for line in reversed(run.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise AssertionError(f"the scenario reported nothing:\n{run.stdout}\n{run.stderr}")
