"""Shared fixtures: every test leaves the registry as it found it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from free_threading import FREE_THREADED, INTERPRETER_SKIP, gil_enabled

import atfork
from atfork._registry import registry

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    """Unregister whatever a test left registered, so tests stay independent."""
    before = set(registry.hooks())
    yield
    for hook in registry.hooks():
        if hook not in before:
            hook.unregister()


# The directory holding the atfork package under test, for the interpreters
# the tests start.
SOURCE = os.path.dirname(atfork.__path__[0])


@pytest.fixture
def atfork_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m atfork ARGS`` in ``tmp_path`` with a deadline; the atfork
    under test is importable, and ATFORK_INTEGRATIONS unset unless ``env`` sets it."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k != "ATFORK_INTEGRATIONS"}
        environ["PYTHONPATH"] = SOURCE
        environ.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "atfork", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=tmp_path,
            env=environ,
        )

    return run


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.fork and subprocess.Popen fail the test if called: for checks that
    must refuse their arguments before any process starts."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("started a process before checking its arguments")

    monkeypatch.setattr(os, "fork", forbidden)
    monkeypatch.setattr(subprocess, "Popen", forbidden)


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The arguments of every ``sys.unraisablehook`` call during the test."""
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """With ATFORK_NO_SKIP=1 (set by CI) a skipped test fails: a missing
    service or optional library must not pass unnoticed. Skips that concern
    the interpreter itself (reason starting with INTERPRETER_SKIP) remain."""
    outcome = yield
    report = outcome.get_result()
    strict = os.environ.get("ATFORK_NO_SKIP") == "1"
    if strict and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        if not str(reason).startswith(("Skipped: " + INTERPRETER_SKIP, INTERPRETER_SKIP)):
            report.outcome = "failed"
            report.longrepr = f"skipped, and ATFORK_NO_SKIP=1 forbids skips: {reason}"


# On the free-threaded build, where the GIL was first found enabled: after
# collection or after a test (its node id).
_gil_enabled_after: list[str] = []


def _note_the_gil(where: str) -> None:
    if FREE_THREADED and not _gil_enabled_after and gil_enabled():
        _gil_enabled_after.append(where)


def pytest_collection_finish(session: pytest.Session) -> None:
    _note_the_gil("collection")


def pytest_runtest_logfinish(nodeid: str) -> None:
    _note_the_gil(nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On the free-threaded build the run fails unless the GIL stayed disabled
    to its end: an extension module that does not declare free-threading
    support enables the GIL at import (a RuntimeWarning says so), and every
    test after it would run as on a GIL build."""
    _note_the_gil("the last test")
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: its controller reports
        workeroutput["gil_enabled_after"] = _gil_enabled_after[:1]
    if _gil_enabled_after:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Under pytest-xdist, where a worker found the GIL enabled counts for
    the whole run (the tests run in the workers, not in the controller)."""
    found = getattr(node, "workeroutput", {}).get("gil_enabled_after")
    if found and not _gil_enabled_after:
        _gil_enabled_after.extend(found)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _gil_enabled_after:
        terminalreporter.section("GIL enabled", red=True)
        terminalreporter.line(
            "this free-threaded interpreter had its GIL enabled, first found "
            f"after {_gil_enabled_after[0]}: the run fails"
        )
