"""The diagnosis behind `python -m atfork doctor` (atfork._doctor)."""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import atfork
from atfork._doctor import diagnose, render
from atfork.integrations import random as atfork_random


@pytest.fixture
def reseeded() -> Iterator[None]:
    """The random integration enabled: numpy, imported by other tests of the
    session, would otherwise give both trial children the same draws."""
    atfork_random.enable()
    yield
    atfork_random.disable()


@pytest.mark.usefixtures("reseeded")
def test_report_lists_hooks_threads_and_integrations() -> None:
    """The report gives the hooks in fork order with where they come from, and the threads."""
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
    assert (True, []) == (report["trial"]["ok"], report["trial"]["problems"])
    text = render(report)
    assert f"urgent  [parent]  {os.path.relpath(__file__)}:{line + 1}" in text
    assert "worker (daemon)" in text
    assert "Trial fork: two children logged, printed, imported" in text


def test_hung_trial_child_is_reported_with_its_stack() -> None:
    """A trial child that hangs is killed; the report says so and shows where it hung."""

    def stuck_after_fork() -> None:
        threading.Event().wait()

    atfork.atfork(child=stuck_after_fork)
    report = diagnose(timeout=0.5)
    assert not report["trial"]["ok"]
    assert "hung for 0.5 s" in report["trial"]["problems"][0]
    assert "in stuck_after_fork" in report["trial"]["stack"]
    assert "stuck_after_fork" in render(report)


@pytest.mark.usefixtures("reseeded")
def test_children_with_the_same_random_draws_are_reported() -> None:
    """Two trial children drawing the same numbers are a finding."""
    atfork.atfork(child=lambda: random.seed(1234))
    report = diagnose()
    assert [
        "two children drew the same numbers from random: enable the random integration"
    ] == report["trial"]["problems"]


@pytest.mark.parametrize("timeout", [float("inf"), 1e12, float("nan"), 0, -1])
@pytest.mark.usefixtures("nothing_starts")
def test_diagnose_refuses_a_bad_timeout_before_forking(timeout: float) -> None:
    """A deadline that is not positive or exceeds a week is a ValueError, not a finding."""
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        diagnose(timeout)


# -- the command: python -m atfork doctor ---------------------------------------

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


def test_command_imports_a_script_and_reports(
    tmp_path: Path, atfork_cli: Callable[..., Any]
) -> None:
    """doctor SCRIPT imports the program (not its main block) and shows its hooks and threads."""
    (tmp_path / "program.py").write_text(PROGRAM)
    done = atfork_cli("doctor", "program.py")
    assert 0 == done.returncode, done.stderr
    assert "3  program.reconnect  [child]  program.py:8" in done.stdout
    assert "poller (daemon)" in done.stdout
    assert "Trial fork: two children logged, printed, imported" in done.stdout


def test_command_prints_json_for_machines(tmp_path: Path, atfork_cli: Callable[..., Any]) -> None:
    """--json prints the report as JSON (the trial children's lines go to stderr)."""
    (tmp_path / "program.py").write_text(PROGRAM)
    done = atfork_cli("doctor", "--json", "-m", "program")
    report = json.loads(done.stdout)
    assert ["program.reconnect"] == [h["name"] for h in report["hooks"]]
    assert report["trial"]["ok"]


def test_command_exits_1_when_a_trial_child_hangs(
    tmp_path: Path, atfork_cli: Callable[..., Any]
) -> None:
    """A program whose child hangs gets exit code 1 and the stack of the hang."""
    (tmp_path / "stuck.py").write_text(
        "import threading, atfork\n"
        "def wait_for_ever():\n"
        "    threading.Event().wait()\n"
        "atfork.atfork(child=wait_for_ever)\n"
    )
    done = atfork_cli("doctor", "--timeout", "1", "stuck.py")
    assert 1 == done.returncode
    assert "a trial child hung for 1 s" in done.stdout
    assert "in wait_for_ever" in done.stdout


def test_command_rejects_a_missing_target(tmp_path: Path, atfork_cli: Callable[..., Any]) -> None:
    """A file or module that does not exist is a one-line error, exit code 2."""
    done = atfork_cli("doctor", "missing.py")
    assert (2, "python -m atfork doctor: error: no such file: 'missing.py' (see --help)\n") == (
        done.returncode,
        done.stderr,
    )
