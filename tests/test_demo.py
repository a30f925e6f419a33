"""The demo behind `python -m atfork demo` (atfork._demo)."""

from __future__ import annotations

import pytest

from atfork import _demo
from atfork.testing import MAX_TIMEOUT, PythonRun


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
