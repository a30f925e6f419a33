"""gunicorn with --preload: the application is imported once, in the master,
and its workers are forked from it. With ATFORK_INTEGRATIONS set (read at
interpreter start-up by atfork.pth) the workers get their own random streams
and database sessions; without it they share the master's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from db_servers import PG, require
from servers import MEET, answers_by_worker, free_port, stop

import atfork

GUNICORN = shutil.which("gunicorn", path=os.path.dirname(sys.executable))
INSTALLED = "site-packages" in atfork.__file__  # atfork.pth is active only when installed
POSTGRES = "postgresql+psycopg://{user}:{password}@{host}:{port}/{dbname}".format(**PG)

APP = """
import fcntl, json, os
import numpy as np
import sqlalchemy

np.random.seed(7)  # the master seeds numpy once; each worker should still differ
engine = sqlalchemy.create_engine(URL, pool_size=1)
with engine.connect() as connection:  # the master uses the pool: a connection is left in it
    master_session = connection.execute(sqlalchemy.text("select pg_backend_pid()")).scalar()

first = {}  # in each worker: what its first request drew and used

def app(environ, start_response):
    meet(ARRIVED, 3)
    if not first:
        # One worker at a time: workers sharing the master's socket then each
        # get a whole reply instead of garbling one another's.
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with engine.connect() as connection:
                session = connection.execute(sqlalchemy.text("select pg_backend_pid()")).scalar()
        first.update(draw=float(np.random.random()), session=session)
    # Answers arrive in any order: each reports the worker's first request.
    body = {"pid": os.getpid(), **first, "master_session": master_session}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
"""

pytestmark = [
    pytest.mark.skipif(GUNICORN is None, reason="gunicorn is not installed"),
    pytest.mark.skipif(not INSTALLED, reason="atfork.pth is only active when installed"),
]


def first_answers(tmp_path: Path, integrations: str) -> tuple[list[dict[str, Any]], str]:
    """Start gunicorn --preload with three workers; return each worker's first answer."""
    assert GUNICORN is not None
    require("postgresql", "sqlalchemy", "psycopg", "numpy")
    lock = tmp_path / "db.lock"
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    settings = f"URL = {POSTGRES!r}; LOCK = {str(lock)!r}; ARRIVED = {str(arrived)!r}\n"
    (tmp_path / "gunicorn_app.py").write_text(settings + MEET + APP)
    port = free_port()
    env = {**os.environ, "ATFORK_INTEGRATIONS": integrations}
    env.pop("PYTHONUNBUFFERED", None)
    server = subprocess.Popen(
        [
            GUNICORN,
            "--preload",
            "--workers",
            "3",
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(tmp_path),
            "gunicorn_app:app",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its workers are killed with it, whatever they do
    )
    try:
        answers = answers_by_worker(port, 3, timeout=60)
    finally:
        log = stop(server, signal.SIGTERM)
    return list(answers.values()), log


def test_without_atfork_workers_share_streams_and_the_database_session(tmp_path: Path) -> None:
    """Without atfork every worker draws the master's numbers and reuses the
    master's database session (its pooled connection)."""
    answers, log = first_answers(tmp_path, "")
    assert 3 == len(answers), log
    assert 1 == len({a["draw"] for a in answers})
    master = answers[0]["master_session"]
    shared = [
        a["session"] for a in answers if a["session"] == master or "error" in str(a["session"])
    ]
    assert 3 == len(shared), answers


def test_with_atfork_workers_get_their_own_streams_and_sessions(tmp_path: Path) -> None:
    """With ATFORK_INTEGRATIONS=random,db each worker draws its own numbers and
    opens its own database session; none uses the master's."""
    answers, log = first_answers(tmp_path, "random,db")
    assert 3 == len(answers), log
    assert 3 == len({a["draw"] for a in answers})
    sessions = {a["session"] for a in answers}
    assert 3 == len(sessions)
    assert answers[0]["master_session"] not in sessions
