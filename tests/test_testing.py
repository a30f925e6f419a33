"""Fork test helpers with deadlines (atfork.testing)."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

import pytest

import atfork
import atfork.testing
from atfork.testing import (
    MAX_TIMEOUT,
    ChildCallbackError,
    ChildError,
    ChildTimeoutError,
    run_in_child,
    run_python,
    wait_child,
)


def hang_forever() -> None:
    threading.Event().wait()


def reaped(pid: int) -> bool:
    """Whether child ``pid`` was reaped already; a child that was not is
    killed and reaped now, so that a failing test leaves nothing behind."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    if not done:
        os.kill(pid, signal.SIGKILL)
        wait_child(pid, timeout=10)
    return False


def interrupt(*args: Any, **kwargs: Any) -> Any:
    """Stands in for the parent's wait: Ctrl-C arrives during it."""
    raise KeyboardInterrupt


# -- run_in_child ---------------------------------------------------------------


def test_returns_the_childs_result() -> None:
    """The child's return value comes back to the parent."""
    assert (os.getpid(), {"a": [1, 2]}) == run_in_child(lambda x: (os.getppid(), x), {"a": [1, 2]})


def test_runs_in_another_process() -> None:
    """The callable runs in a child, not in the parent."""
    assert os.getpid() != run_in_child(os.getpid)


def test_reraises_the_childs_exception_with_its_traceback() -> None:
    """The child's exception is raised in the parent, the child's traceback as its cause."""

    def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing") as info:
        run_in_child(fail)
    assert "in fail" in str(info.value.__cause__)


@pytest.mark.parametrize(("code", "shown"), [(3, "3"), (None, "None"), ("bye", "'bye'")])
def test_system_exit_in_the_child_is_a_child_error(code: Any, shown: str) -> None:
    """sys.exit() in the child raises ChildError naming the exit code, the SystemExit as its
    cause; it does not exit the caller."""
    with pytest.raises(ChildError, match=rf"raised SystemExit\({re.escape(shown)}\)") as info:
        run_in_child(sys.exit, code)
    cause = info.value.__cause__
    assert (SystemExit, code) == (type(cause), getattr(cause, "code", None))


def test_unpicklable_result_is_a_child_error() -> None:
    """A result that cannot be sent raises ChildError naming the problem."""
    with pytest.raises(ChildError, match="could not send"):
        run_in_child(lambda: threading.Lock())


def test_child_that_dies_without_result_is_a_child_error() -> None:
    """A child that exits or is killed before answering raises ChildError with its status."""
    with pytest.raises(ChildError, match="exited with code 7"):
        run_in_child(os._exit, 7)
    with pytest.raises(ChildError, match=f"killed by signal {int(signal.SIGKILL)}"):
        run_in_child(lambda: os.kill(os.getpid(), signal.SIGKILL))


def test_hung_child_is_killed_with_its_stack() -> None:
    """At the deadline the child is killed; the error holds the stack of each of its threads."""
    with pytest.raises(ChildTimeoutError, match=r"still running after 0\.5 s") as info:
        run_in_child(hang_forever, timeout=0.5)
    assert "in hang_forever" in info.value.stack


def test_child_hung_in_a_fork_callback_still_dumps_its_stack() -> None:
    """A child that hangs before its own code starts (in a child callback) is dumped too."""

    def stuck_in_child_callback() -> None:
        hang_forever()

    atfork.atfork(child=stuck_in_child_callback)
    with pytest.raises(ChildTimeoutError) as info:
        run_in_child(lambda: None, timeout=0.5)
    assert "in stuck_in_child_callback" in info.value.stack


BAD_TIMEOUTS = [0, -1.0, float("nan"), float("inf"), 1e12, MAX_TIMEOUT + 1]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
@pytest.mark.usefixtures("nothing_starts")
def test_timeout_must_be_positive_and_at_most_a_week(timeout: float) -> None:
    """A deadline that is not positive, is NaN or exceeds MAX_TIMEOUT is refused before forking."""
    message = r"timeout must be a positive number of seconds, at most 604800 \(a week\), not "
    with pytest.raises(ValueError, match=message):
        run_in_child(lambda: None, timeout=timeout)


@pytest.mark.parametrize("timeout", ["1", None, True])
@pytest.mark.usefixtures("nothing_starts")
def test_timeout_must_be_a_number(timeout: Any) -> None:
    """A deadline that is not a number (a bool is none) is a TypeError, before forking."""
    with pytest.raises(TypeError, match="timeout must be a number of seconds, not "):
        run_in_child(lambda: None, timeout=timeout)


def test_the_longest_timeout_works() -> None:
    """MAX_TIMEOUT is within what the system calls of every helper accept."""
    assert 1 == run_in_child(lambda: 1, timeout=MAX_TIMEOUT)
    assert "1\n" == run_python("print(1)", timeout=MAX_TIMEOUT).stdout
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (coverage is shut down by os._exit)
        os._exit(0)
    assert 0 == wait_child(pid, timeout=MAX_TIMEOUT)


def test_an_interrupted_run_in_child_kills_its_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in the parent after the fork (Ctrl-C while it waits) kills and reaps it."""
    pid_r, pid_w = os.pipe()

    def tell_pid_and_hang() -> None:
        os.write(pid_w, str(os.getpid()).encode())
        hang_forever()

    def interrupt_once_started(fd: int, deadline: float) -> bytes:
        assert select.select([pid_r], [], [], 30)[0]
        raise KeyboardInterrupt

    monkeypatch.setattr(atfork.testing, "_read_result", interrupt_once_started)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_in_child(tell_pid_and_hang, timeout=30)
        pid = int(os.read(pid_r, 100))
    finally:
        os.close(pid_r)
        os.close(pid_w)
    assert reaped(pid)


def test_child_callback_errors_are_reported_in_the_parent(unraisable: list[Any]) -> None:
    """An atfork callback that raises in the child is reported again in the parent."""

    def boom() -> None:
        raise ZeroDivisionError("child side")

    atfork.atfork(child=boom, name="boom-hook")
    assert "ok" == run_in_child(lambda: "ok")
    assert 1 == len(unraisable)
    report = unraisable[0]
    assert report.exc_type is ChildCallbackError
    assert report.err_msg.startswith("Exception ignored in atfork child callback ")
    assert re.search(r" \(in child \d+\)$", report.err_msg)
    # The hook is named in the message from 3.14 on, in the exception before.
    assert "<atfork.Hook 'boom-hook'" in report.err_msg + str(report.exc_value)
    assert "ZeroDivisionError: child side" in str(report.exc_value)


def test_fork_with_threads_does_not_warn() -> None:
    """The DeprecationWarning for forking with threads (3.12+) is not raised by the helper."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert 1 == run_in_child(lambda: 1)
    finally:
        stop.set()
        thread.join()


def test_a_fork_raising_after_the_child_exists_keeps_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When os.fork() raises its multi-threaded DeprecationWarning in the
    parent after the child exists (3.15+ under an error filter), the helper
    still gets that child's result, and each callback ran once."""
    real_fork = os.fork

    def fork_as_on_315() -> int:
        pid = real_fork()
        if pid:
            raise DeprecationWarning(f"This process (pid={os.getpid()}) is multi-threaded")
        return pid

    monkeypatch.setattr(os, "fork", fork_as_on_315)
    calls: list[str] = []
    atfork.atfork(
        prepare=lambda: calls.append("prepare"),
        parent=lambda: calls.append("parent"),
        child=lambda: calls.append("child"),
    )
    assert ["prepare", "child"] == run_in_child(lambda: list(calls))
    assert ["prepare", "parent"] == calls


def test_concurrent_calls_each_get_their_childs_reports(unraisable: list[Any]) -> None:
    """Two threads calling run_in_child at once each get the callback errors
    of their own children, and sys.unraisablehook is restored after."""
    hook = sys.unraisablehook

    def boom() -> None:
        raise ValueError(f"in a child of {threading.current_thread().name}")

    atfork.atfork(child=boom)
    errors: list[BaseException] = []

    def fork_many() -> None:
        try:
            for _ in range(FORKS_EACH):
                run_in_child(int)
        except BaseException as exc:  # noqa: BLE001  (checked below)
            errors.append(exc)

    threads = [threading.Thread(target=fork_many, name=f"forker-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [] == errors
    assert hook is sys.unraisablehook
    counts = {
        t.name: sum(f"in a child of {t.name}" in str(r.exc_value) for r in unraisable)
        for t in threads
    }
    assert {t.name: FORKS_EACH for t in threads} == counts


FORKS_EACH = 40


def test_parent_unraisablehook_is_restored() -> None:
    """The helper puts back the sys.unraisablehook it found."""
    before = sys.unraisablehook
    run_in_child(lambda: None)
    assert before is sys.unraisablehook


# -- wait_child -------------------------------------------------------------------


def test_wait_child_returns_the_exit_code() -> None:
    """wait_child gives the exit code of a child that exits in time."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (coverage is shut down by os._exit)
        os._exit(5)
    assert 5 == wait_child(pid, timeout=30)


def test_wait_child_kills_at_the_deadline() -> None:
    """A child still running at the deadline is killed and reaped."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (coverage is shut down by os._exit)
        hang_forever()
    with pytest.raises(ChildTimeoutError, match="was killed"):
        wait_child(pid, timeout=0.3)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_an_interrupted_wait_child_kills_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while wait_child waits (Ctrl-C) kills and reaps the child."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (coverage is shut down by os._exit)
        hang_forever()
    wait = atfork.testing._wait
    waits: list[int] = []

    def interrupt_the_first(pid: int, deadline: float) -> int | None:
        # Ctrl-C during the wait for the child; the reaping after the kill
        # waits as it does.
        waits.append(pid)
        if len(waits) == 1:
            interrupt()
        return wait(pid, deadline)

    monkeypatch.setattr(atfork.testing, "_wait", interrupt_the_first)
    with pytest.raises(KeyboardInterrupt):
        wait_child(pid, timeout=30)
    assert reaped(pid)


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_wait_child_refuses_a_bad_timeout_and_leaves_the_child(timeout: float) -> None:
    """A bad deadline is a ValueError; the child is neither waited for nor killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (coverage is shut down by os._exit)
        os._exit(6)
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        wait_child(pid, timeout=timeout)
    assert 6 == wait_child(pid)


@pytest.mark.parametrize("pid", [-1, 0, -os.getpgrp()], ids=["-1", "0", "-pgid"])
def test_wait_child_refuses_a_pid_that_names_no_single_child(pid: int) -> None:
    """A pid of 0 or below (any child, a process group) is a ValueError; no child is reaped."""
    child = os.fork()
    if child == 0:  # pragma: no cover  (coverage is shut down by os._exit)
        os._exit(5)
    with pytest.raises(ValueError, match=f"pid must be a positive process id, not {pid}"):
        wait_child(pid, timeout=5)
    assert 5 == wait_child(child)


@pytest.mark.parametrize("pid", [True, 1.0, "1", None])
def test_wait_child_pid_must_be_an_int(pid: Any) -> None:
    """A pid that is not an int (a bool is none) is a TypeError."""
    with pytest.raises(TypeError, match="pid must be an int, not "):
        wait_child(pid)


# -- run_python -------------------------------------------------------------------


def test_run_python_gives_output_and_exit_code() -> None:
    """Output and exit code of a fresh interpreter come back; line numbers are kept."""
    result = run_python("import sys\nprint('out')\nraise SystemExit(3)")
    assert (3, "out\n", False) == (result.returncode, result.stdout, result.timed_out)
    traceback_run = run_python("x = 1\nraise ValueError('line two')")
    assert 'File "<run_python>", line 2' in traceback_run.stderr


def test_run_python_kills_at_the_deadline_with_the_stack() -> None:
    """A hung interpreter is killed at its deadline; its stack is reported."""
    result = run_python(
        "import threading\nprint('started', flush=True)\nthreading.Event().wait()", timeout=1
    )
    assert result.timed_out
    assert result.returncode is None
    assert "started\n" == result.stdout
    assert 'File "<run_python>", line 3' in result.stack


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
@pytest.mark.usefixtures("nothing_starts")
def test_run_python_refuses_a_bad_timeout(timeout: float) -> None:
    """A bad deadline is a ValueError before the interpreter starts."""
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        run_python("pass", timeout=timeout)


def test_an_interrupted_run_python_kills_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while run_python waits (Ctrl-C) kills the interpreter and reaps it."""
    started: list[int] = []

    def interrupted(process: subprocess.Popen[bytes], timeout: float | None = None) -> Any:
        started.append(process.pid)
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess.Popen, "communicate", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_python("import threading\nthreading.Event().wait()", timeout=30)
        assert reaped(started[0])
    finally:
        with contextlib.suppress(ProcessLookupError, IndexError):
            os.killpg(started[0], signal.SIGKILL)


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n    return 'ok'\nprint(f())",
        "class C:\n    x = 'ok'\nprint(C.x)",
        "if True:\n    print('ok')",
        "with open(__import__('os').devnull):\n    print('ok')",
        "@staticmethod\ndef f():\n    return 'ok'\nprint(f.__func__())",
        "from __future__ import annotations\ndef f(x: Undefined) -> None: pass\nprint('ok')",
        "'ok'\nprint(__doc__)",
    ],
    ids=["def", "class", "if", "with", "decorator", "future", "docstring"],
)
def test_run_python_runs_any_source(source: str) -> None:
    """A source may begin with any statement: a compound one, a __future__ import or a docstring."""
    result = run_python(source)
    assert (0, "ok\n", "") == (result.returncode, result.stdout, result.stderr)


def test_run_python_runs_the_source_as_main() -> None:
    """The source runs as __main__, with sys.argv ["-c"] and none of the helper's names."""
    source = "import sys\nprint(__name__, sys.argv, [n for n in globals() if n[:2] != '__'])"
    assert "__main__ ['-c'] ['sys']\n" == run_python(source).stdout


def test_run_python_tracebacks_give_the_sources_line_numbers() -> None:
    """A traceback names each line of the source by its own number, after a docstring too."""
    source = '"""A docstring."""\ndef fail():\n    raise ValueError("three")\nfail()\n'
    stderr = run_python(source).stderr
    assert 'File "<run_python>", line 4, in <module>' in stderr
    assert 'File "<run_python>", line 3, in fail' in stderr
    if sys.version_info >= (3, 13):  # where linecache is loaded at start-up anyway
        assert '    raise ValueError("three")\n' in stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"source": 123}, "source must be a str, not int"),
        ({"source": b"pass"}, "source must be a str, not bytes"),
        ({"source": "pass", "env": {"A": 1}}, "env must map str to str, not 'A': 1"),
        ({"source": "pass", "env": {1: "a"}}, "env must map str to str, not 1: 'a'"),
        ({"source": "pass", "env": [("A", "1")]}, "env must be a mapping, not list"),
        ({"source": "pass", "executable": 1}, "executable must be a path, not int"),
    ],
)
@pytest.mark.usefixtures("nothing_starts")
def test_run_python_checks_its_arguments_first(arguments: dict[str, Any], message: str) -> None:
    """Arguments of the wrong type are a TypeError before the interpreter starts."""
    with pytest.raises(TypeError, match=re.escape(message)):
        run_python(**arguments)


def test_run_python_removes_pythonunbuffered(monkeypatch: pytest.MonkeyPatch) -> None:
    """PYTHONUNBUFFERED is not passed on, unless env sets it; env adds variables."""
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    source = "import os; print(os.environ.get('PYTHONUNBUFFERED'), os.environ.get('EXTRA'))"
    assert "None x\n" == run_python(source, env={"EXTRA": "x"}).stdout
    assert "1 None\n" == run_python(source, env={"PYTHONUNBUFFERED": "1"}).stdout


def test_run_python_kills_children_that_hold_its_output() -> None:
    """A child left behind holding the output pipes does not make the helper wait
    for ever: it is killed at the deadline, and the interpreter's own result kept."""
    source = (
        "import os, threading\n"
        "if os.fork() == 0:\n"
        "    threading.Event().wait()  # the child keeps stdout and stderr open\n"
        "print('parent done', flush=True)\n"
        "os._exit(4)\n"
    )
    result = run_python(source, timeout=2)
    assert (4, "parent done\n", False) == (result.returncode, result.stdout, result.timed_out)


def test_run_python_kills_the_children_of_a_hung_interpreter() -> None:
    """At the deadline the whole process group goes: a hung interpreter and its child."""
    source = (
        "import os, threading\n"
        "pid = os.fork()\n"
        "print(pid if pid else '', end='', flush=True)\n"
        "threading.Event().wait()\n"
    )
    result = run_python(source, timeout=1)
    assert result.timed_out
    assert gone(int(result.stdout))


def gone(pid: int) -> bool:
    """Whether process ``pid`` disappears within 5 s (killed, once reaped)."""
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
