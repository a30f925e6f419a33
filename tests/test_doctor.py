"""The diagnosis behind `python -m atfork doctor` (atfork._doctor, atfork._inspection,
atfork._trial)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import sysconfig
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import atfork
from atfork._doctor import diagnose, render
from atfork.integrations import random as atfork_random
from atfork.testing import run_python

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "integrations"))
from db_servers import PG, require

# Whether interpreters started here read ATFORK_INTEGRATIONS at start-up: the
# wheel installs atfork.pth (tox installs it).
INSTALLED = Path(sysconfig.get_paths()["purelib"], "atfork.pth").is_file()

Doctor = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def reseeded() -> Iterator[None]:
    """The random integration enabled: numpy, imported by other tests of the
    session, would otherwise give both trial children the same draws."""
    atfork_random.enable()
    yield
    atfork_random.disable()


def checks(report: dict[str, Any]) -> list[str]:
    return [f["check"] for f in report["findings"]]


def found(report: dict[str, Any], check: str, source: str | None = None) -> list[dict[str, Any]]:
    """The findings of one kind (from the inspection or the trial, if ``source`` says)."""
    return [f for f in report["findings"] if f["check"] == check and source in (None, f["source"])]


@pytest.mark.usefixtures("reseeded")
def test_report_lists_hooks_threads_and_integrations() -> None:
    """The report gives the hooks in fork order with where they come from, the threads,
    and the other threads as a finding the threading integration answers."""
    line = sys._getframe().f_lineno + 1
    first = atfork.atfork(prepare=lambda: None, child=lambda: None, name="first")
    atfork.atfork(parent=lambda: None, name="urgent", priority=5)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="worker", daemon=True)
    thread.start()
    try:
        report = diagnose()
    finally:
        stop.set()
        thread.join()
    mine = [h for h in report["hooks"] if h["name"] in ("first", "urgent")]
    assert [
        {"name": "urgent", "priority": 5, "where": f"{__file__}:{line + 1}", "phases": ["parent"]},
        {"name": "first", "priority": 0, "where": first.where, "phases": ["prepare", "child"]},
    ] == mine
    assert {"name": "worker", "daemon": True, "main": False} in report["threads"]
    assert set(report["integrations"]) >= set(atfork.integrations.BUILTIN)
    threads = found(report, "threads")
    assert 1 == len(threads)
    assert "(worker)" in threads[0]["problem"]
    assert ("threading", "atfork.integrations.threading.track") == (
        threads[0]["integration"],
        threads[0]["track"],
    )
    # Other findings (random generators, handlers) depend on what earlier
    # tests left in this process; the trial children must neither hang nor fail.
    assert not {"hang", "failed"} & set(checks(report)), report["findings"]
    assert 2 == report["trial"]["children"]
    text = render(report)
    assert f"urgent  [parent]  {os.path.relpath(__file__)}:{line + 1}" in text
    assert "worker (daemon)" in text
    assert "[threading] 1 other thread(s) alive at the fork (worker)" in text
    assert "Not checked:" in text


def test_hung_trial_child_is_reported_with_its_stack() -> None:
    """A trial child that hangs is killed; the report says so and shows where it hung."""

    def stuck_after_fork() -> None:
        threading.Event().wait()

    atfork.atfork(child=stuck_after_fork)
    report = diagnose(timeout=0.5)
    hangs = found(report, "hang")
    assert 1 == len(hangs)
    assert "a trial child hung for 0.5 s before its first step" in hangs[0]["problem"]
    assert "in stuck_after_fork" in hangs[0]["stack"]
    assert "stuck_after_fork" in render(report)


@pytest.mark.usefixtures("reseeded")
def test_children_with_the_same_random_draws_are_reported() -> None:
    """Two trial children drawing the same numbers are a finding."""
    atfork.atfork(child=lambda: random.seed(1234))
    report = diagnose()
    # Generators earlier tests left in this process may be reported too.
    same = [f for f in found(report, "random") if " from random:" in f["problem"]]
    assert [
        "two trial children drew the same numbers from random: every forked child "
        "repeats its siblings' draws"
    ] == [f["problem"] for f in same]


@pytest.mark.parametrize("timeout", [float("inf"), 1e12, float("nan"), 0, -1])
@pytest.mark.usefixtures("nothing_starts")
def test_diagnose_refuses_a_bad_timeout_before_forking(timeout: float) -> None:
    """A deadline that is not positive or exceeds a week is a ValueError, not a finding."""
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        diagnose(timeout)


# -- the command: python -m atfork doctor ---------------------------------------


@pytest.fixture
def doctor(atfork_cli: Callable[..., subprocess.CompletedProcess[str]]) -> Doctor:
    """Run ``python -m atfork doctor ARGS`` as atfork_cli runs a command, without
    PYTHONUNBUFFERED (empty is unset): it hides what happens to buffered streams."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return atfork_cli("doctor", *args, env={"PYTHONUNBUFFERED": "", **(env or {})})

    return run


def report_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON report on stdout, which must hold nothing else."""
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError as error:
        raise AssertionError(
            f"not JSON:\n{done.stdout[:2000]}\nstderr:\n{done.stderr[-2000:]}"
        ) from error
    return report


PROGRAM = """
import threading
import atfork

def reconnect():
    pass

atfork.atfork(child=reconnect, name="program.reconnect", priority=3)
threading.Thread(target=threading.Event().wait, name="poller", daemon=True).start()

if __name__ == "__main__":
    raise SystemExit("the main block must not run")
"""


def test_command_imports_a_script_and_reports(tmp_path: Path, doctor: Doctor) -> None:
    """doctor SCRIPT imports the program (not its main block) and shows its hooks and
    threads; its thread is a finding, with the integration that answers it."""
    (tmp_path / "program.py").write_text(PROGRAM)
    done = doctor("program.py")
    assert 1 == done.returncode, done.stderr
    assert "3  program.reconnect  [child]  program.py:8" in done.stdout
    assert "poller (daemon)" in done.stdout
    assert "[threading] 1 other thread(s) alive at the fork (poller)" in done.stdout
    assert "fix: enable the threading integration" in done.stdout
    assert "Not checked:" in done.stdout
    assert '`if __name__ == "__main__":`' in done.stdout


def test_command_prints_json_for_machines(tmp_path: Path, doctor: Doctor) -> None:
    """--json prints the report as JSON, with what doctor did not check."""
    (tmp_path / "program.py").write_text(PROGRAM)
    done = doctor("--json", "-m", "program", env={"ATFORK_INTEGRATIONS": "threading,stdio"})
    report = report_of(done)
    assert ["program.reconnect"] == [h["name"] for h in report["hooks"] if "program" in h["name"]]
    if INSTALLED:  # atfork.pth enabled them at start-up
        assert ([], True, 0) == (report["findings"], report["ok"], done.returncode)
    assert any("__atfork_doctor__" in item for item in report["not_checked"])


def test_command_exits_1_when_a_trial_child_hangs(tmp_path: Path, doctor: Doctor) -> None:
    """A program whose child hangs gets exit code 1 and the stack of the hang."""
    (tmp_path / "stuck.py").write_text(
        "import threading, atfork\n"
        "def wait_for_ever():\n"
        "    threading.Event().wait()\n"
        "atfork.atfork(child=wait_for_ever)\n"
    )
    done = doctor("--timeout", "1", "stuck.py")
    assert 1 == done.returncode
    assert "a trial child hung for 1 s before its first step" in done.stdout
    assert "in wait_for_ever" in done.stdout


def test_command_rejects_a_missing_target(tmp_path: Path, atfork_cli: Callable[..., Any]) -> None:
    """A file or module that does not exist is a one-line error, exit code 2."""
    done = atfork_cli("doctor", "missing.py")
    assert (2, "python -m atfork doctor: error: no such file: 'missing.py' (see --help)\n") == (
        done.returncode,
        done.stderr,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "a SCRIPT or -m MODULE is required"),
        (["--"], "a SCRIPT or -m MODULE is required"),
        (["--json", "--timeout", "3"], "a SCRIPT or -m MODULE is required"),
        (["-m"], "-m needs a MODULE"),
    ],
)
def test_bad_command_lines_are_one_line_errors(
    tmp_path: Path, doctor: Doctor, args: list[str], message: str
) -> None:
    """Without a program, or with -m and no module, doctor says so in one line, exit code
    2, and runs nothing."""
    (tmp_path / "x.py").write_text("print('ran')\n")
    done = doctor(*args)
    assert (2, "") == (done.returncode, done.stdout)
    assert f"python -m atfork doctor: error: {message} (see --help)\n" == done.stderr


def test_help_documents_the_exit_statuses(doctor: Doctor) -> None:
    """--help ends with the exit statuses, 3 for a program that did not import."""
    done = doctor("--help")
    assert 0 == done.returncode
    assert "doctor [--json] [--timeout SECONDS] (-m MODULE | [--] SCRIPT) [ARGS...]" in (
        done.stdout
    )
    assert (
        "exit status: 0 no finding, 1 findings, 2 a bad command line, 3 the program did not "
        "import (it raised, or called sys.exit(), while imported)"
    ) in " ".join(done.stdout.split())


# -- the program's own command line ---------------------------------------------

ARGV = """
import json, sys
with open("argv.json", "w") as file:
    json.dump(sys.argv, file)
"""


@pytest.mark.parametrize(
    ("args", "argv"),
    [
        (["report.py", "a", "--flag"], ["report.py", "a", "--flag"]),
        (["--json", "--", "report.py", "--json"], ["report.py", "--json"]),
        (["report.py", "--", "--timeout", "x"], ["report.py", "--", "--timeout", "x"]),
        (["-m", "report", "--timeout", "1"], ["{report}", "--timeout", "1"]),
        (["--timeout", "5", "-m", "report", "--", "y"], ["{report}", "--", "y"]),
    ],
)
def test_the_program_sees_its_own_argv(
    tmp_path: Path, doctor: Doctor, args: list[str], argv: list[str]
) -> None:
    """The program gets [SCRIPT, *ARGS] (for -m, its file first) as sys.argv, as with run;
    the options of doctor come before it."""
    (tmp_path / "report.py").write_text(ARGV)
    done = doctor(*args)
    assert done.returncode in (0, 1), done.stderr
    expected = [a.format(report=tmp_path / "report.py") for a in argv]
    assert expected == json.loads((tmp_path / "argv.json").read_text())


# -- --json keeps stdout for the report -------------------------------------------

NOISY = """
import os, sys, threading, time
print("printed at import, not flushed")
os.write(1, b"written to descriptor 1\\n")
printed = threading.Event()

def chatter():
    while True:
        print("printed by a thread", flush=True)
        printed.set()
        time.sleep(0.001)  # a pace, not a synchronisation

threading.Thread(target=chatter, name="chatter", daemon=True).start()
printed.wait()
"""


def test_json_is_the_only_thing_on_stdout(tmp_path: Path, doctor: Doctor) -> None:
    """With --json, stdout holds the report alone while the program prints at import and
    from a thread, and the trial children print; the program's output goes to stderr."""
    (tmp_path / "noisy.py").write_text(NOISY)
    done = doctor("--json", "--timeout", "5", "noisy.py")
    report = report_of(done)
    assert 1 == done.returncode == report["exit_status"]
    assert "printed at import, not flushed" in done.stderr
    assert "written to descriptor 1" in done.stderr
    assert "printed by a thread" in done.stderr
    # What the trial children print and log goes to files of their own.
    assert "can print" not in done.stdout + done.stderr


# -- a program that does not import ------------------------------------------------


@pytest.mark.parametrize(
    ("source", "summary", "error"),
    [
        (
            "raise ValueError('bad config')\n",
            "the program did not import: it raised ValueError: bad config",
            {"type": "ValueError", "message": "bad config", "exit_status": None},
        ),
        (
            "import sys\nsys.exit(4)\n",
            "the program did not import: it called sys.exit(4), exit status 4, while imported",
            {"type": "SystemExit", "message": "", "exit_status": 4},
        ),
        (
            "raise SystemExit('no config')\n",
            "the program did not import: it called sys.exit('no config'), exit status 1",
            {"type": "SystemExit", "message": "no config", "exit_status": 1},
        ),
    ],
)
def test_a_program_that_does_not_import_is_exit_status_3(
    tmp_path: Path, doctor: Doctor, source: str, summary: str, error: dict[str, Any]
) -> None:
    """A program that raises or exits while imported is reported as such, with exit
    status 3 (not the program's), as text and as JSON."""
    (tmp_path / "broken.py").write_text("print('started')\n" + source)
    done = doctor("broken.py")
    assert 3 == done.returncode, done.stdout + done.stderr
    assert summary in " ".join(done.stdout.split())
    assert f'File "broken.py", line {source.count(chr(10)) + 1}, in <module>' in done.stdout
    done = doctor("--json", "broken.py")
    report = report_of(done)
    assert (3, 3, False) == (done.returncode, report["exit_status"], report["program"]["imported"])
    assert error == {k: report["program"]["error"][k] for k in error}
    assert report["program"]["error"]["summary"].startswith(summary)
    assert "started" in done.stderr


# -- what the trial children and the inspection find --------------------------------

CHATTER = """
import logging, sys, threading, time
{enable}
log = logging.getLogger("app.requests")
log.addHandler(logging.StreamHandler(sys.stdout))
log.setLevel(logging.INFO)
busy = threading.Event()

def serve():
    for number in range(10**9):
        log.info("request %d handled", number)
        print("tick", number)
        busy.set()
        time.sleep(0.0005)  # a pace, not a synchronisation

threading.Thread(target=serve, name="server", daemon=True).start()
busy.wait()
"""

ENABLE = "import atfork.integrations; atfork.integrations.enable({names})"


@pytest.mark.parametrize("enabled", ["off", "variable", "call"])
def test_a_thread_logging_and_printing_at_import(
    tmp_path: Path, doctor: Doctor, enabled: str
) -> None:
    """A thread that logs through a handler on a non-root logger and prints, both to a
    block-buffered stdout: findings for stdio and logging naming the handler and its
    logger, until those integrations are enabled (by the variable or in the program)."""
    if enabled == "variable" and not INSTALLED:
        pytest.skip("atfork.pth reads ATFORK_INTEGRATIONS once atfork is installed")
    names = '"logging", "stdio"' if enabled == "call" else ""
    (tmp_path / "app.py").write_text(CHATTER.format(enable=ENABLE.format(names=names)))
    env = {"ATFORK_INTEGRATIONS": "logging,stdio"} if enabled == "variable" else {}
    done = doctor("--json", "--timeout", "2", "app.py", env=env)
    report = report_of(done)
    assert 1 == done.returncode  # the thread alone is a finding, with threading off
    fixed_by = {f["integration"] for f in report["findings"]}
    if enabled == "off":
        assert {"stdio", "logging", "threading"} <= fixed_by
        logging_findings = [f["problem"] for f in found(report, "logging")]
        assert any(
            "<StreamHandler <stdout> (NOTSET)> on logger 'app.requests'" in problem
            for problem in logging_findings
        ), logging_findings
        assert "sys.stdout is block-buffered" in json.dumps(report["findings"])
    else:
        assert (True, True) == (report["integrations"]["logging"], report["integrations"]["stdio"])
        assert not {"stdio", "logging"} & fixed_by, report["findings"]


STUCK_RECORD = """
import fcntl, logging, os, struct, termios, threading
{enable}
read_end, write_end = os.pipe()  # nobody reads it
audit = logging.getLogger("app.audit")
audit.addHandler(logging.StreamHandler(os.fdopen(write_end, "w")))
audit.propagate = False
capacity = fcntl.fcntl(read_end, getattr(fcntl, "F_GETPIPE_SZ", 1032))
# One record larger than the pipe: the thread blocks in its write, holding
# the stream's lock, once the pipe is full, and stays so.
threading.Thread(target=audit.warning, args=("x" * 4 * capacity,), daemon=True).start()
while struct.unpack("i", fcntl.ioctl(read_end, termios.FIONREAD, bytes(4)))[0] < capacity:
    pass
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_GETPIPE_SZ is Linux's")
@pytest.mark.parametrize("enabled", [False, True])
def test_a_record_stuck_in_a_handler_hangs_a_trial_child(
    tmp_path: Path, doctor: Doctor, enabled: bool
) -> None:
    """A thread blocked writing a record holds its stream's lock: the trial child that
    uses that handler hangs, and the finding names the handler, its logger and the
    logging integration; with logging enabled no child hangs."""
    enable = ENABLE.format(names='"logging"') if enabled else ""
    (tmp_path / "audit.py").write_text(STUCK_RECORD.format(enable=enable))
    done = doctor("--json", "--timeout", "2", "audit.py")
    report = report_of(done)
    hangs = found(report, "hang")
    if enabled:
        assert [] == hangs
        return
    assert 1 == len(hangs), report["findings"]
    assert (
        "a trial child hung for 2 s taking the lock of the stream of <StreamHandler "
        in (hangs[0]["problem"])
    )
    assert "on logger 'app.audit'" in hangs[0]["problem"]
    assert ("logging", "enable the logging integration") == (
        hangs[0]["integration"],
        hangs[0]["fix"],
    )
    assert "_trial.py" in hangs[0]["stack"]


SQLITE = """
import sqlite3
{track}
conn = sqlite3.connect("app.db")
conn.execute("create table if not exists t (x)")
closed = sqlite3.connect(":memory:")
closed.close()
{tracked}
"""


@pytest.mark.parametrize("tracked", [False, True])
def test_an_open_sqlite3_connection(tmp_path: Path, doctor: Doctor, tracked: bool) -> None:
    """An open sqlite3 connection is a finding naming it and db.track() (the db
    integration does not find sqlite3 connections itself); a tracked or closed one is
    not."""
    (tmp_path / "app.py").write_text(
        SQLITE.format(
            track="from atfork.integrations import db" if tracked else "",
            tracked="db.track(conn)" if tracked else "",
        )
    )
    done = doctor("--json", "app.py")
    report = report_of(done)
    db = found(report, "db")
    if tracked:
        assert ([], 0) == (db, done.returncode)
        return
    assert 1 == len(db), report["findings"]
    assert db[0]["problem"].startswith("sqlite3.Connection app.conn is open")
    assert (None, "atfork.integrations.db.track") == (db[0]["integration"], db[0]["track"])
    assert db[0]["fix"].startswith("pass app.conn to atfork.integrations.db.track()")


POSTGRES = """
import psycopg
PG = {pg!r}
{enable}
conn = psycopg.connect(**PG)
conn.execute("select 1")
"""


@pytest.mark.parametrize("enabled", [False, True])
def test_an_open_postgresql_connection(tmp_path: Path, doctor: Doctor, enabled: bool) -> None:
    """An open psycopg connection is a finding for the db integration (or db.track());
    with db enabled before it connects, it is covered."""
    require("postgresql", "psycopg")
    enable = ENABLE.format(names='"db"') if enabled else ""
    (tmp_path / "app.py").write_text(POSTGRES.format(pg=PG, enable=enable))
    done = doctor("--json", "app.py")
    report = report_of(done)
    db = found(report, "db")
    if enabled:
        assert [] == db
        return
    assert 1 == len(db), report["findings"]
    assert db[0]["problem"].startswith("psycopg.Connection app.conn is open: a forked child")
    assert ("db", "atfork.integrations.db.track") == (db[0]["integration"], db[0]["track"])


DJANGO = """
import django
from django.conf import settings
{enable}
settings.configure(DATABASES={{"default": {{
    "ENGINE": "django.db.backends.postgresql", "NAME": {pg[dbname]!r}, "USER": {pg[user]!r},
    "PASSWORD": {pg[password]!r}, "HOST": {pg[host]!r}, "PORT": {pg[port]!r},
}}}})
django.setup()
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("select 1")
"""


@pytest.mark.parametrize("enabled", [False, True])
def test_an_open_django_connection(tmp_path: Path, doctor: Doctor, enabled: bool) -> None:
    """A connected Django database is a finding for the django integration (its
    driver connection is no db finding of its own); with django enabled it is
    covered."""
    require("postgresql", "django", "psycopg")
    enable = ENABLE.format(names='"django"') if enabled else ""
    (tmp_path / "app.py").write_text(DJANGO.format(pg=PG, enable=enable))
    report = report_of(doctor("--json", "app.py"))
    assert [] == found(report, "db")
    django = found(report, "django")
    if enabled:
        assert [] == django
        return
    assert 1 == len(django), report["findings"]
    assert django[0]["problem"].startswith("Django's 'default' database connection (")
    assert "Django ticket #31637" in django[0]["problem"]
    assert ("django", None) == (django[0]["integration"], django[0]["track"])


PROMETHEUS = """
import threading
{enable}
from prometheus_client import Counter
jobs = Counter("jobs", "jobs done")
jobs.inc()
threading.Thread(target=threading.Event().wait, name="poller", daemon=True).start()
"""


@pytest.mark.parametrize("enabled", [False, True])
def test_prometheus_in_multiprocess_mode_with_threads(
    tmp_path: Path, doctor: Doctor, enabled: bool
) -> None:
    """prometheus_client in multiprocess mode with another thread alive is a
    finding for the prometheus integration; with it enabled it is covered."""
    pytest.importorskip("prometheus_client", reason="prometheus_client is not installed")
    enable = ENABLE.format(names='"prometheus"') if enabled else ""
    (tmp_path / "metrics").mkdir()
    (tmp_path / "app.py").write_text(PROMETHEUS.format(enable=enable))
    done = doctor("--json", "app.py", env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")})
    prometheus = found(report_of(done), "prometheus")
    if enabled:
        assert [] == prometheus
        return
    assert 1 == len(prometheus), report_of(done)["findings"]
    assert "client_python issue 431" in prometheus[0]["problem"]
    assert ("prometheus", None) == (prometheus[0]["integration"], prometheus[0]["track"])


PENDING = """
{enable}
print("left in the buffer at import")
"""


@pytest.mark.parametrize("enabled", [False, True])
def test_output_a_child_writes_again(tmp_path: Path, doctor: Doctor, enabled: bool) -> None:
    """Output the program left in sys.stdout's buffer is written again by a trial child
    (into a file of the child's, not the real stdout): a stdio finding, until stdio is
    enabled."""
    enable = ENABLE.format(names='"stdio"') if enabled else ""
    (tmp_path / "app.py").write_text(PENDING.format(enable=enable))
    done = doctor("--json", "app.py")
    report = report_of(done)
    assert 1 == done.stderr.count("left in the buffer at import")  # the parent's, once
    again = found(report, "stdio", "trial")
    if enabled:
        assert ([], 0) == (again, done.returncode)
        return
    assert 1 == len(again), report["findings"]
    assert (
        "a trial child wrote again 29 byte(s) that the parent had in sys.stdout's buffer"
        in (again[0]["problem"])
    )
    assert "('left in the buffer at import'...)" in again[0]["problem"]
    assert "stdio" == again[0]["integration"]


HELD_LOCK = """
import threading
{track}
state_lock = threading.Lock()
{tracked}
holding = threading.Event()

def hold():
    with state_lock:
        holding.set()
        threading.Event().wait()

threading.Thread(target=hold, name="holder", daemon=True).start()
holding.wait()
"""


@pytest.mark.parametrize("tracked", [False, True])
def test_a_lock_held_at_the_fork(tmp_path: Path, doctor: Doctor, tracked: bool) -> None:
    """A module-level lock another thread holds at the fork is a finding naming it and
    threading.track(); a tracked one is re-initialised in the child and is not."""
    (tmp_path / "app.py").write_text(
        textwrap.dedent(HELD_LOCK).format(
            track="from atfork.integrations import threading as fork_threads" if tracked else "",
            tracked="fork_threads.track(state_lock)" if tracked else "",
        )
    )
    done = doctor("--json", "app.py")
    report = report_of(done)
    held = found(report, "threading", "trial")
    if tracked:
        assert [] == held
        return
    assert 1 == len(held), report["findings"]
    assert held[0]["problem"].startswith("app.state_lock (a _thread.lock) was held at the fork")
    assert held[0]["fix"] == "pass app.state_lock to atfork.integrations.threading.track()"


# -- pooled HTTP connections ------------------------------------------------------

HTTP_CLIENT = """
CA = {ca!r}
HTTPS = {url!r}
URL = HTTPS + "/echo?who=doctor"
{enable}
{setup}
{tracked}
{use}
assert "doctor" == got["who"], got
{late}
"""

# library -> (making the client, then using it, with {close} where it may close it)
HTTP_CLIENTS = {
    "requests": (
        "import requests\n"
        "client = requests.Session()\n"
        "client.trust_env = False\n"
        "client.verify = CA",
        "got = client.get(URL, timeout=15).json()\n{close}",
    ),
    "httpx": (
        "import httpx, ssl\n"
        "client = httpx.Client(verify=ssl.create_default_context(cafile=CA), trust_env=False)",
        "got = client.get(URL, timeout=15).json()\n{close}",
    ),
    "botocore": (
        "import botocore.session\n"
        "client = botocore.session.get_session().create_client(\n"
        '    "s3", region_name="us-east-1", endpoint_url=HTTPS, verify=CA,\n'
        '    aws_access_key_id="test", aws_secret_access_key="test")',
        'got = client.head_bucket(Bucket="doctor")["ResponseMetadata"]["HTTPHeaders"]\n'
        'got = {{"who": got["x-who"]}}\n{close}',
    ),
    "httpx-async": (
        "import asyncio, httpx, ssl\n"
        "client = httpx.AsyncClient(verify=ssl.create_default_context(cafile=CA), "
        "trust_env=False)",
        "async def use():\n"
        "    answer = (await client.get(URL, timeout=15)).json()\n"
        "    {close}\n"
        "    return answer\n"
        "got = asyncio.run(use())",
    ),
}


@pytest.fixture(scope="module")
def http_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The http integration's local HTTP and HTTPS servers."""
    require(None, "trustme")
    from http_servers import start

    with start(tmp_path_factory.mktemp("http-servers")) as running:
        yield running


@pytest.mark.parametrize("state", ["off", "enabled", "late", "tracked", "closed"])
@pytest.mark.parametrize("library", list(HTTP_CLIENTS))
def test_a_pooled_http_connection(
    tmp_path: Path, doctor: Doctor, http_servers: Any, library: str, state: str
) -> None:
    """A client holding a keep-alive TLS connection in its pool is a finding naming it,
    the connection's host and port, and the http integration (or http.track()); with
    http enabled after it connected, http.track() alone; with http enabled before the
    client was made, the client tracked, or closed, it is not."""
    require(None, library.split("-")[0])
    setup, use = HTTP_CLIENTS[library]
    close = {"httpx-async": "await client.aclose()"}.get(library, "client.close()")
    (tmp_path / "app.py").write_text(
        HTTP_CLIENT.format(
            ca=http_servers.ca,
            url=http_servers.https,
            enable=ENABLE.format(names='"http"') if state == "enabled" else "",
            late=ENABLE.format(names='"http"') if state == "late" else "",
            setup=setup,
            tracked="from atfork.integrations import http\nhttp.track(client)"
            if state == "tracked"
            else "",
            use=use.format(close=close if state == "closed" else "pass"),
        )
    )
    done = doctor("--json", "app.py")
    report = report_of(done)
    pooled = found(report, "http")
    if state not in ("off", "late"):
        assert ([], 0) == (report["findings"], done.returncode)
        return
    assert 1 == len(pooled), report["findings"]
    assert (
        f" app.client holds 1 pooled connection(s) to {http_servers.https}: "
        in (pooled[0]["problem"])
    )
    fix = "pass app.client to atfork.integrations.http.track()"
    if state == "off":
        assert "http" == pooled[0]["integration"]
        fix = f"enable the http integration, or {fix}"
    else:  # the integration does not find what connected before it was enabled
        assert (True, None) == (report["integrations"]["http"], pooled[0]["integration"])
    assert "atfork.integrations.http.track" == pooled[0]["track"]
    assert pooled[0]["fix"].startswith(fix), pooled[0]["fix"]


HTTP_LIBRARIES = ("urllib3", "requests", "botocore", "httpcore", "httpx")


def test_the_inspection_imports_no_http_library() -> None:
    """Doctor looks for pooled connections without importing an HTTP library the
    program did not import."""
    require(None, *HTTP_LIBRARIES)
    run = run_python(
        "import sys\n"
        "from atfork._inspection import inspect\n"
        "inspect({'http': False})\n"
        f"print(sorted(set({HTTP_LIBRARIES!r}) & set(sys.modules)))\n"
    )
    assert (0, "[]") == (run.returncode, run.stdout.strip()), run.stderr
