"""The stdio integration (atfork.integrations.stdio): each failure it fixes,
reproduced in a fresh interpreter without it and gone with it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scenario_logging import assert_idempotent, run, without_and_with

from atfork.integrations import stdio
from atfork.testing import run_python


@pytest.fixture(autouse=True)
def _disabled() -> Iterator[None]:
    yield
    stdio.disable()


PRINT_WHILE_ANOTHER_THREAD_WRITES = """
read_end, write_end = os.pipe()
os.dup2(write_end, 1)  # stdout is now a pipe nobody reads yet

def child():
    print("child", os.getpid(), flush=True)
    return os.getpid()

fork_while_blocked(read_end, write_end, lambda: print("p" * 200_000, flush=True), child)
"""


def test_print_while_another_thread_writes_to_stdout() -> None:
    """Case 3 (CPython gh-84579): print() in the child hangs when another
    thread was writing to stdout at fork; with the integration the child's
    line arrives once, and the parent's line whole, once."""
    plain, fixed = without_and_with(PRINT_WHILE_ANOTHER_THREAD_WRITES, ("stdio",))
    assert "hang" == plain["outcome"]
    assert "in child" in plain["stack"]
    assert ("ok", 1, 200_000) == (fixed["outcome"], fixed["lines"], fixed["parent"])


PENDING_OUTPUT = """\
import gc, os, sys
from atfork.testing import wait_child
if {enabled!r}:
    import atfork.integrations.stdio
    atfork.integrations.stdio.enable()
print("pending from the parent")  # stdout is a pipe: this stays in the buffer
sys.stderr.write("pending on stderr")  # no newline: stays in the buffer too
pid = os.fork()
if pid == 0:
    print("from the child")
    gc.collect()
    sys.exit(0)  # a normal exit flushes the standard streams
sys.exit(wait_child(pid))
"""


@pytest.mark.parametrize("enabled", [False, True])
def test_pending_output_is_written_once(enabled: bool) -> None:
    """Case 4: output still in the buffers at fork is written by the parent
    and, without the integration, a second time by the child at its exit."""
    found = run_python(PENDING_OUTPUT.format(enabled=enabled), timeout=30)
    assert 0 == found.returncode, found.stderr
    times = 1 if enabled else 2
    assert (times, 1) == (
        found.stdout.count("pending from the parent"),
        found.stdout.count("from the child"),
    )
    assert times == found.stderr.count("pending on stderr")


PROPERTIES = """
import io

sys.stdout.reconfigure(errors="replace", line_buffering=True)
sys.stderr.reconfigure(encoding="latin-1")
{setup}

def describe(stream):
    return dict(
        fileno=stream.fileno(),
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=stream.line_buffering,
        write_through=stream.write_through,
        name=stream.name,
        mode=stream.mode,
        buffer=type(stream.buffer).__name__,
    )

inherited = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)

def child():
    out, err, own_out, own_err = inherited
    return dict(
        new=(sys.stdout is not out, sys.stderr is not err),
        own=(sys.__stdout__ is sys.stdout, sys.__stderr__ is sys.stderr),
        user=sys.stdout is out and isinstance(out, io.StringIO),
        inherited_open=(own_out.closed, own_err.closed) == (False, False),
        stdout=describe(sys.__stdout__),
        stderr=describe(sys.__stderr__),
    )

found = outcome(child)
found["parent"] = dict(stdout=describe(sys.__stdout__), stderr=describe(sys.__stderr__))
report(found)
"""


@pytest.mark.parametrize("unbuffered", [False, True])
def test_fresh_streams_like_the_inherited_ones(unbuffered: bool) -> None:
    """The child's sys.stdout and sys.stderr are new objects (sys.__stdout__
    and sys.__stderr__ too) on the same descriptors, with the same encoding,
    errors, buffering and write-through, unbuffered (python -u) or not; the
    inherited ones stay open."""
    env = {"PYTHONUNBUFFERED": "1"} if unbuffered else None
    found = run(PROPERTIES.format(setup=""), ("stdio",), env=env)
    result = found["result"]
    assert (True, True) == tuple(result["new"])
    assert (True, True) == tuple(result["own"])
    assert result["inherited_open"]
    assert found["parent"] == {"stdout": result["stdout"], "stderr": result["stderr"]}
    assert ("replace", True) == (result["stdout"]["errors"], result["stdout"]["line_buffering"])
    assert ("latin-1", 2) == (result["stderr"]["encoding"], result["stderr"]["fileno"])
    buffer = "FileIO" if unbuffered else "BufferedWriter"
    assert (buffer, unbuffered) == (result["stdout"]["buffer"], result["stdout"]["write_through"])


def test_a_stream_the_program_installed_is_left_alone() -> None:
    """sys.stdout replaced by the program (a StringIO) is the same object in
    the child; sys.stderr, the interpreter's own, is replaced."""
    found = run(PROPERTIES.format(setup="sys.stdout = io.StringIO()"), ("stdio",))
    result = found["result"]
    assert result["user"]
    assert (False, True) == tuple(result["new"])


HANDLERS = """
if {threads!r}:  # another thread may be writing to a standard stream
    threading.Thread(target=threading.Event().wait, daemon=True).start()
to_stderr = logging.StreamHandler()
to_stdout = logging.StreamHandler(sys.stdout)
inherited = sys.stderr

def child():
    return dict(
        current=(to_stderr.stream is sys.stderr, to_stdout.stream is sys.stdout),
        inherited=to_stderr.stream is inherited,
        fileno=to_stderr.stream.fileno(),
    )

report(outcome(child))
"""


@pytest.mark.parametrize(
    ("integrations", "threads", "current", "inherited"),
    [
        (("stdio",), True, [False, False], True),
        (("logging",), True, [False, False], False),
        (("logging",), False, [True, True], True),
        (("logging", "stdio"), True, [True, True], False),
        (("logging", "stdio"), False, [True, True], False),
    ],
)
def test_logging_handlers_follow_the_new_streams(
    integrations: tuple[str, ...], threads: bool, current: list[bool], inherited: bool
) -> None:
    """With both integrations, handlers that wrote to the inherited stdout or
    stderr write to the replacements. The logging integration alone gives
    them a fresh stream of their own when other threads existed at the fork
    (one of them may have held the stream's lock), and leaves them alone in
    a process without threads; stdio alone leaves handlers alone."""
    result = run(HANDLERS.format(threads=threads), integrations)["result"]
    assert (current, inherited, 2) == (result["current"], result["inherited"], result["fileno"])


def test_disable_restores_the_inherited_streams() -> None:
    """After disable(), the child keeps the inherited objects, as without
    the integration."""
    body = PROPERTIES.format(setup="import atfork.integrations.stdio as s; s.disable()")
    result = run(body, ("stdio",))["result"]
    assert [False, False] == result["new"]


GRANDCHILD = """
def grandchild():
    print("grandchild", flush=True)
    return sys.stdout is not inherited

def child():
    global inherited
    inherited = sys.stdout
    return outcome(grandchild)

report(outcome(child))
"""


def test_a_child_of_a_child_gets_fresh_streams_too() -> None:
    """A child's own child replaces the streams it inherited from the child."""
    found = run(GRANDCHILD, ("stdio",))
    assert {"outcome": "ok", "result": True} == found["result"]


def test_enable_is_idempotent() -> None:
    """enable() twice registers one hook; disable() twice is harmless."""
    assert_idempotent(stdio)


INTACT = """\
import logging, os, sys, threading, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads (3.12+)
import atfork.integrations
from atfork.testing import wait_child

atfork.integrations.enable("logging", "stdio")
# Whole lines, so that the children's lines cannot land inside a parent's
# line; a line can still be half in the buffer at a fork.
sys.stdout.reconfigure(line_buffering=True)
log = logging.getLogger("intact")
log.addHandler(logging.StreamHandler())  # sys.stderr
stop = threading.Event()

def chatter():
    i = 0
    while not stop.is_set():
        print("parent-out-%d" % i)
        log.warning("parent-log-%d", i)
        i += 1
    print("parent-count-%d" % i)

thread = threading.Thread(target=chatter)
thread.start()
for number in range(20):
    pid = os.fork()
    if pid == 0:
        print("child-out-%d" % number)
        log.warning("child-log-%d", number)
        if number % 2:
            sys.stdout.flush()
            os._exit(0)
        sys.exit(0)  # a normal exit flushes the standard streams
    assert 0 == wait_child(pid)
stop.set()
thread.join()
"""


def test_parent_and_child_output_intact() -> None:
    """With both integrations, a parent that prints and logs from a thread
    while forking 20 children loses and repeats nothing; every child's line
    and record appears once."""
    found = run_python(INTACT, timeout=60)
    assert 0 == found.returncode, found.stderr
    out, err = found.stdout.split(), found.stderr.split()
    count = int(out[-1].rpartition("-")[2])
    assert [f"parent-out-{i}" for i in range(count)] == [
        line for line in out if line.startswith("parent-out-")
    ]
    assert [f"parent-log-{i}" for i in range(count)] == [
        line for line in err if line.startswith("parent-log-")
    ]
    children = [f"child-out-{n}" for n in range(20)]
    assert children == [line for line in out if line.startswith("child-")]
    assert [f"child-log-{n}" for n in range(20)] == [
        line for line in err if line.startswith("child-")
    ]
