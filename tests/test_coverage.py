"""Which ways of starting a process run the atfork callbacks: one test per row of
the coverage table in README.rst."""

from __future__ import annotations

import multiprocessing
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

import atfork
from atfork.testing import wait_child

DEADLINE = 30.0


class Counts:
    """Counts prepare and parent calls here; a child call writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.prepare = self.parent = 0
        self.marker = marker
        atfork.atfork(prepare=self._prepare, parent=self._parent, child=self._child)

    def _prepare(self) -> None:
        self.prepare += 1

    def _parent(self) -> None:
        self.parent += 1

    def _child(self) -> None:
        # Low-level on purpose: in a subprocess child this runs between fork
        # and exec, where little else is safe.
        fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    def ran(self) -> tuple[int, int, bool]:
        return self.prepare, self.parent, self.marker.exists()


@pytest.fixture
def counts(tmp_path: Path) -> Counts:
    return Counts(tmp_path / "child-ran")


def exit_with_marker(marker: str) -> None:
    """The target of a multiprocessing child: exit 0 if the child callback ran."""
    sys.exit(0 if os.path.exists(marker) else 3)


def test_os_fork(counts: Counts) -> None:
    """os.fork() runs prepare, parent and child."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (coverage is shut down by os._exit)
        os._exit(0)
    assert 0 == wait_child(pid, timeout=DEADLINE)
    assert (1, 1, True) == counts.ran()


@pytest.mark.parametrize("forkpty", [os.forkpty, pty.fork], ids=["os.forkpty", "pty.fork"])
def test_forkpty(counts: Counts, forkpty: Callable[[], tuple[int, int]]) -> None:
    """os.forkpty() and pty.fork() run prepare, parent and child."""
    pid, master = forkpty()
    if pid == 0:  # pragma: no cover  (coverage is shut down by os._exit)
        os._exit(0)
    try:
        assert 0 == wait_child(pid, timeout=DEADLINE)
    finally:
        os.close(master)
    assert (1, 1, True) == counts.ran()


@pytest.mark.parametrize(
    ("method", "expected"),
    [("fork", (1, 1, True, 0)), ("spawn", (0, 0, False, 3)), ("forkserver", (0, 0, False, 3))],
)
def test_multiprocessing(counts: Counts, method: str, expected: tuple[int, int, bool, int]) -> None:
    """multiprocessing's fork method runs the callbacks; spawn and forkserver do not."""
    context: Any = multiprocessing.get_context(method)
    process = context.Process(target=exit_with_marker, args=(str(counts.marker),))
    process.start()
    process.join(DEADLINE)
    if process.exitcode is None:
        process.kill()
        process.join()
        pytest.fail(f"the {method} child did not finish within {DEADLINE} s")
    assert expected == (*counts.ran(), process.exitcode)


def test_billiard_process(counts: Counts) -> None:
    """billiard, the multiprocessing fork behind celery's prefork workers, runs the callbacks."""
    import billiard  # type: ignore[import-untyped]

    process = billiard.Process(target=exit_with_marker, args=(str(counts.marker),))
    process.start()
    process.join(DEADLINE)
    if process.exitcode is None:
        process.terminate()
        pytest.fail(f"the billiard child did not finish within {DEADLINE} s")
    assert (1, 1, True, 0) == (*counts.ran(), process.exitcode)


def test_subprocess_with_preexec_fn(counts: Counts) -> None:
    """subprocess with preexec_fn forks through Python: the callbacks run."""
    subprocess.run(["true"], preexec_fn=lambda: None, check=True, timeout=DEADLINE)
    assert (1, 1, True) == counts.ran()


def test_subprocess_without_preexec_fn(counts: Counts) -> None:
    """subprocess without preexec_fn starts the program without running Python: no callbacks."""
    subprocess.run(["true"], check=True, timeout=DEADLINE)
    assert (0, 0, False) == counts.ran()


def test_posix_spawn(counts: Counts) -> None:
    """os.posix_spawn runs no callbacks."""
    pid = os.posix_spawn("/bin/true", ["true"], dict(os.environ))
    assert 0 == wait_child(pid, timeout=DEADLINE)
    assert (0, 0, False) == counts.ran()
