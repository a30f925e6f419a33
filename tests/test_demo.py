"""The demo behind `python -m atfork demo` (atfork._demo)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from atfork import _cli, _demo
from atfork.testing import MAX_TIMEOUT, PythonRun


def forbidden(*args: Any, **kwargs: Any) -> Any:
    """Stands in for subprocess.Popen where nothing may start."""
    raise AssertionError("started an interpreter before checking the timeout")


@pytest.mark.parametrize("timeout", ["inf", "1e12", "604801", "nan", "0", "-1", "abc"])
def test_command_rejects_a_bad_timeout(
    timeout: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --timeout that is not a positive number of seconds up to a week is a one-line usage
    error with exit code 2, before any interpreter starts."""
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    with pytest.raises(SystemExit) as stopped:
        _cli.main(["demo", "--timeout", timeout])
    assert (
        2,
        "python -m atfork demo: error: argument --timeout: must be a positive number of "
        f"seconds, at most 604800 (a week), not {timeout!r} (see --help)\n",
    ) == (stopped.value.code, capsys.readouterr().err)


def test_the_longest_timeout_keeps_the_run_within_max_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --timeout at MAX_TIMEOUT, the deadline of the scenario's interpreter is no longer."""
    deadlines: list[float] = []

    def record(source: str, *, timeout: float) -> PythonRun:
        deadlines.append(timeout)
        return PythonRun(0, '{"seconds": 0.001}', "", "")

    monkeypatch.setattr(_demo, "run_python", record)
    assert {"seconds": 0.001} == _demo._scenario(False, MAX_TIMEOUT)
    assert [MAX_TIMEOUT] == deadlines
