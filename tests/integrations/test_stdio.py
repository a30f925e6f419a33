"""The stdio integration (atfork.integrations.stdio): each failure it fixes,
reproduced in a fresh interpreter without it and gone with it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scenario_logging import run, without_and_with

import atfork
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
        same=(sys.stdout is out, sys.stderr is err),
        own=(sys.__stdout__ is sys.stdout, sys.__stderr__ is sys.stderr),
        user=sys.stdout is out and isinstance(out, io.StringIO),
        open=(own_out.closed, own_err.closed) == (False, False),
        stdout=describe(sys.__stdout__),
        stderr=describe(sys.__stderr__),
    )

found = outcome(child)
found["parent"] = dict(stdout=describe(sys.__stdout__), stderr=describe(sys.__stderr__))
report(found)
"""


@pytest.mark.parametrize("unbuffered", [False, True])
def test_standard_streams_stay_the_same_objects(unbuffered: bool) -> None:
    """The child's sys.stdout and sys.stderr are the inherited objects,
    repaired in place: open, on the same descriptors, with the same
    encoding, errors, buffering and write-through, unbuffered (python -u)
    or not."""
    env = {"PYTHONUNBUFFERED": "1"} if unbuffered else None
    found = run(PROPERTIES.format(setup=""), ("stdio",), env=env)
    result = found["result"]
    assert (True, True) == tuple(result["same"])
    assert (True, True) == tuple(result["own"])
    assert result["open"]
    assert found["parent"] == {"stdout": result["stdout"], "stderr": result["stderr"]}
    assert ("replace", True) == (result["stdout"]["errors"], result["stdout"]["line_buffering"])
    assert ("latin-1", 2) == (result["stderr"]["encoding"], result["stderr"]["fileno"])
    buffer = "FileIO" if unbuffered else "BufferedWriter"
    assert (buffer, unbuffered) == (result["stdout"]["buffer"], result["stdout"]["write_through"])


def test_a_stream_the_program_installed_is_left_alone() -> None:
    """sys.stdout replaced by the program (a StringIO) is the same object in
    the child."""
    found = run(PROPERTIES.format(setup="sys.stdout = io.StringIO()"), ("stdio",))
    result = found["result"]
    assert result["user"]
    assert (True, True) == tuple(result["same"])


SAVED_REFERENCE = """\
import os, sys
from atfork.testing import wait_child
import atfork.integrations.stdio
atfork.integrations.stdio.enable()
out = sys.stdout  # kept, as a library's console object keeps it
pid = os.fork()
if pid == 0:
    out.write("child, through a saved reference\\n")  # stdout is a pipe: buffered
    sys.exit(0)  # a normal exit flushes sys.stdout, which is that object
sys.exit(wait_child(pid))
"""


def test_output_through_a_saved_reference_is_written() -> None:
    """What a child writes through a reference to sys.stdout kept from
    before the fork is flushed at its exit, once."""
    found = run_python(SAVED_REFERENCE, timeout=30)
    assert 0 == found.returncode, found.stderr
    assert 1 == found.stdout.count("child, through a saved reference")


HANDLERS = """
if {threads!r}:  # another thread may be writing to a standard stream
    threading.Thread(target=threading.Event().wait, daemon=True).start()
to_stderr = logging.StreamHandler()
to_stdout = logging.StreamHandler(sys.stdout)
inherited = (sys.stderr, sys.stdout)

def child():
    return dict(
        same=(to_stderr.stream is sys.stderr, to_stdout.stream is sys.stdout),
        inherited=(to_stderr.stream, to_stdout.stream) == inherited,
        fileno=to_stderr.stream.fileno(),
    )

report(outcome(child))
"""


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("integrations", [("stdio",), ("logging",), ("logging", "stdio")])
def test_logging_handlers_keep_their_streams(integrations: tuple[str, ...], threads: bool) -> None:
    """Handlers that wrote to sys.stdout or sys.stderr write to them in the
    child too: the same objects, repaired in place, with or without other
    threads at the fork."""
    result = run(HANDLERS.format(threads=threads), integrations)["result"]
    assert ([True, True], True, 2) == (result["same"], result["inherited"], result["fileno"])


def test_disable_stops_the_repair() -> None:
    """After disable(), the child writes the parent's pending output again,
    as without the integration."""
    body = PENDING_OUTPUT.format(enabled=True).replace(
        "stdio.enable()", "stdio.enable()\n    atfork.integrations.stdio.disable()"
    )
    found = run_python(body, timeout=30)
    assert 0 == found.returncode, found.stderr
    assert 2 == found.stdout.count("pending from the parent")


GRANDCHILD = """\
import os, sys
from atfork.testing import wait_child
if {enabled!r}:
    import atfork.integrations.stdio
    atfork.integrations.stdio.enable()
pid = os.fork()
if pid == 0:
    print("pending in the child")  # stdout is a pipe: this stays in the buffer
    grandchild = os.fork()
    if grandchild == 0:
        sys.exit(0)
    sys.exit(wait_child(grandchild))
sys.exit(wait_child(pid))
"""


@pytest.mark.parametrize("enabled", [False, True])
def test_a_child_of_a_child_is_repaired_too(enabled: bool) -> None:
    """Output pending in a child when it forks again is written by that
    child alone; without the integration by the grandchild too."""
    found = run_python(GRANDCHILD.format(enabled=enabled), timeout=30)
    assert 0 == found.returncode, found.stderr
    assert (1 if enabled else 2) == found.stdout.count("pending in the child")


def test_enable_is_idempotent() -> None:
    """enable() twice starts the repair once; disable() twice is harmless."""
    stdio.enable()
    stdio.enable()
    assert stdio.is_enabled()
    assert 1 == len([h for h in atfork.hooks() if h.name == "atfork.integrations._buffers"])
    stdio.disable()
    stdio.disable()
    assert not stdio.is_enabled()


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
