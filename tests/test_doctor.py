"""The diagnosis behind `python -m atfork doctor` (atfork._doctor)."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator

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
    assert "urgent  [parent]" in text
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
