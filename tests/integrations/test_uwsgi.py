"""uWSGI workers get the atfork child callbacks (atfork.integrations.uwsgi),
with a real uWSGI server (pyuwsgi)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from free_threading import FREE_THREADED, NEEDS_GIL
from servers import MEET, answers_by_worker, free_port, stop

import atfork
from atfork.integrations import uwsgi as atfork_uwsgi

UWSGI = shutil.which("uwsgi", path=os.path.dirname(sys.executable))

APP = """
import json, os
import atfork, atfork.integrations

ran = []
atfork.atfork(child=lambda: ran.append(atfork.fork_origin()), name="records-its-runs")
if os.environ.get("WITH_ATFORK") == "1":
    atfork.integrations.enable("uwsgi")

def app(environ, start_response):
    meet(ARRIVED, 2)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"pid": os.getpid(), "ran": ran}).encode()]
"""

if FREE_THREADED:
    needs_uwsgi = pytest.mark.skip(reason=NEEDS_GIL["pyuwsgi"])
else:
    needs_uwsgi = pytest.mark.skipif(UWSGI is None, reason="pyuwsgi is not installed")


def serve(tmp_path: Path, options: list[str], with_atfork: bool) -> tuple[dict[int, Any], str]:
    """Start uWSGI with two workers; return what each worker answered, and the log."""
    assert UWSGI is not None
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    (tmp_path / "uwsgi_app.py").write_text(f"ARRIVED = {str(arrived)!r}\n" + MEET + APP)
    port = free_port()
    root = os.path.dirname(os.path.dirname(atfork.__file__))
    env = {**os.environ, "WITH_ATFORK": "1" if with_atfork else "0"}
    env.pop("PYTHONUNBUFFERED", None)
    server = subprocess.Popen(
        [
            UWSGI,
            "--master",
            "--processes",
            "2",
            "--enable-threads",
            "--http-socket",
            f"127.0.0.1:{port}",
            "--pythonpath",
            str(tmp_path),
            "--pythonpath",
            root,
            "--module",
            "uwsgi_app:app",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its workers are killed with it, whatever they do
    )
    try:
        answers = answers_by_worker(port, 2, timeout=30)
    finally:
        log = stop(server, signal.SIGINT)
    return {pid: answer["ran"] for pid, answer in answers.items()}, log


@needs_uwsgi
def test_without_atfork_workers_run_no_child_callback(tmp_path: Path) -> None:
    """uWSGI's default fork runs no Python fork hook: the workers never ran the callback."""
    answers, log = serve(tmp_path, [], with_atfork=False)
    assert [[], []] == list(answers.values()), log


@needs_uwsgi
def test_with_atfork_each_worker_runs_the_child_callbacks_once(tmp_path: Path) -> None:
    """With the integration each worker runs them once, from the post-fork hook,
    and uWSGI's log warns that prepare callbacks cannot run."""
    answers, log = serve(tmp_path, [], with_atfork=True)
    assert [["check"], ["check"]] == list(answers.values()), log
    assert "UwsgiForkHooksWarning" in log


@needs_uwsgi
def test_with_fork_hooks_the_callbacks_run_in_the_fork_and_not_again(tmp_path: Path) -> None:
    """With --py-call-uwsgi-fork-hooks the callbacks run in the fork itself;
    the post-fork check finds them run and does nothing; no warning."""
    answers, log = serve(tmp_path, ["--py-call-uwsgi-fork-hooks"], with_atfork=True)
    assert [["os.fork"], ["os.fork"]] == list(answers.values()), log
    assert "UwsgiForkHooksWarning" not in log


if sys.version_info < (3, 13):  # 3.13 aborts in PyOS_AfterFork_Child() without BeforeFork

    @needs_uwsgi
    def test_with_osafterfork_alone_the_check_runs_them(tmp_path: Path) -> None:
        """--py-call-osafterfork gives the child half only: atfork's child
        callbacks wait for the post-fork check, which runs them once."""
        answers, log = serve(tmp_path, ["--py-call-osafterfork"], with_atfork=True)
        assert [["check"], ["check"]] == list(answers.values()), log


def test_outside_uwsgi_enable_explains_where_it_works() -> None:
    """Enabling outside a uWSGI process is a clear RuntimeError; the rest is inert."""
    with pytest.raises(RuntimeError, match="works in a uWSGI process only"):
        atfork_uwsgi.enable()
    atfork_uwsgi.disable()
    assert not atfork_uwsgi.is_enabled()
