"""The logging integration (atfork.integrations.logging): each failure it
fixes, reproduced in a fresh interpreter without it and gone with it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from functools import partial

import pytest
from scenario_logging import (
    HANG,
    SUCCESS,
    assert_idempotent,
    run,
    side_by_side,
    without_and_with,
)

import atfork.integrations
from atfork.integrations import logging as atfork_logging
from atfork.testing import run_in_child, run_python


@pytest.fixture(autouse=True)
def _disabled() -> Iterator[None]:
    yield
    atfork_logging.disable()


PRIVATE_LOCK = """
class GuardedHandler(logging.Handler):
    '''Emits under a lock of its own; the parent's first record keeps it.'''

    def __init__(self):
        super().__init__()
        self.guard = threading.{kind}()
        self.messages = []

    def emit(self, record):
        with self.guard:
            self.messages.append(record.getMessage())
            if os.getpid() == PARENT and len(self.messages) == 1:
                threading.Event().wait()  # a thread stuck in emit, holding the guard

handler = GuardedHandler()
log = logging.getLogger("private")
log.addHandler(handler)
if {in_emit!r}:
    threading.Thread(target=log.warning, args=("parent",), daemon=True).start()
else:  # a background thread of the handler's (a flusher, say) holds it
    def flusher():
        with handler.guard:
            handler.messages.append("parent")
            threading.Event().wait()
    threading.Thread(target=flusher, daemon=True).start()
wait_for(lambda: handler.messages)

def child():
    log.warning("child")
    return handler.messages

report(outcome(child))
"""


@pytest.mark.parametrize(
    ("kind", "in_emit"),
    [("Lock", True), ("RLock", True), ("Condition", True), ("Lock", False)],
)
def test_handler_private_lock(kind: str, in_emit: bool) -> None:
    """Case 1: a handler lock of its own, held by another thread at fork (in
    emit, or outside any log call), hangs the child's next log call; with the
    integration the child logs at once (and the fork does not wait for the
    stuck thread, which never lets go)."""
    source = PRIVATE_LOCK.format(kind=kind, in_emit=in_emit)
    plain, fixed = without_and_with(source, ("logging",))
    assert "hang" == plain["outcome"]
    assert "in emit" in plain["stack"]
    assert {"outcome": "ok", "result": ["parent", "child"]} == fixed


def test_handler_existing_at_enable() -> None:
    """A handler created before enable() is covered like one created after."""
    fixed = run(PRIVATE_LOCK.format(kind="Lock", in_emit=True), ("logging",), late=True)
    assert {"outcome": "ok", "result": ["parent", "child"]} == fixed


STREAM_ON_FULL_PIPE = """
read_end, write_end = os.pipe()
log = logging.getLogger("pipe")
log.addHandler(logging.StreamHandler(open(write_end, "w")))

def child():
    log.warning("child %d", os.getpid())
    return os.getpid()

fork_while_blocked(read_end, write_end, lambda: log.warning("p" * 200_000), child)
"""


def test_stream_locked_by_a_writer_blocked_on_a_full_pipe() -> None:
    """Case 2: a StreamHandler whose stream's BufferedWriter lock is held (a
    thread blocked writing to a full pipe) hangs the child although the
    handler lock was reset; with the integration the child's record arrives
    once, and the parent's blocked record arrives whole, once."""
    plain, fixed = without_and_with(STREAM_ON_FULL_PIPE, ("logging",))
    assert "hang" == plain["outcome"]
    assert "in flush" in plain["stack"] or "in emit" in plain["stack"]
    assert ("ok", 1, 200_000) == (fixed["outcome"], fixed["lines"], fixed["parent"])


QUEUE_LISTENER = """
import logging.handlers, queue

path = os.path.join({tmp!r}, "log-%d.txt" % len(INTEGRATIONS))
gate = threading.Event()

class SlowFileHandler(logging.FileHandler):
    '''In the parent, the first record waits at the gate, holding the handler.'''

    def emit(self, record):
        if os.getpid() == PARENT and record.getMessage() == "p0":
            gate.wait()
        super().emit(record)

records = queue.{queue}()
listener = logging.handlers.QueueListener(records, SlowFileHandler(path))
listener.start()
log = logging.getLogger("queued")
log.addHandler(logging.handlers.QueueHandler(records))
for i in range(5):
    log.warning("p%d", i)  # p0 holds the listener; p1..p4 wait in the queue
wait_for(lambda: records.qsize() == 4)

def child():
    log.warning("child")

found = outcome(child)
gate.set()
listener.stop()
with open(path) as f:
    report(found, lines=f.read().split())
"""


@pytest.mark.parametrize("late", [False, True], ids=["started-after-enable", "running-at-enable"])
@pytest.mark.parametrize("kind", ["Queue", "SimpleQueue"])
def test_queue_listener(kind: str, late: bool, tmp_path: os.PathLike[str]) -> None:
    """Case 5: the QueueListener thread does not exist in the child, so the
    child's records are never handled; with the integration the child's
    record is handled once, and the parent's queued records once (the child
    does not handle its copy of them). The listener is started after
    enable() (noted by the wrapped start()) or before it (found running)."""
    plain, fixed = without_and_with(
        QUEUE_LISTENER.format(tmp=os.fspath(tmp_path), queue=kind), ("logging",), late=late
    )
    parent = ["p0", "p1", "p2", "p3", "p4"]
    assert {"outcome": "ok", "result": None, "lines": parent} == plain
    assert {"outcome": "ok", "result": None, "lines": ["child", *parent]} == fixed


MEMORY_HANDLER = """
import logging.handlers

path = os.path.join({tmp!r}, "log-%d.txt" % len(INTEGRATIONS))
target = logging.FileHandler(path)
buffered = logging.handlers.MemoryHandler(100, flushLevel=logging.CRITICAL, target=target)
log = logging.getLogger("memory")
log.addHandler(buffered)
log.warning("parent")  # buffered, not yet written

def child():
    log.warning("child")
    buffered.flush()

found = outcome(child)
buffered.flush()
with open(path) as f:
    report(found, lines=f.read().split())
"""


def test_memory_handler_records_not_repeated(tmp_path: os.PathLike[str]) -> None:
    """A MemoryHandler's buffered parent records are flushed by the parent
    only: without the integration the child flushes them a second time."""
    plain, fixed = without_and_with(MEMORY_HANDLER.format(tmp=os.fspath(tmp_path)), ("logging",))
    assert ["parent", "child", "parent"] == plain["lines"]
    assert ["child", "parent"] == fixed["lines"]


CHILD_HOOK_BEFORE_LOGGING = """\
import os, sys, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)

def log_in_child():
    import logging
    logging.getLogger("hook").warning("from the child hook")

if sys.argv[-1] == "atfork":
    import atfork
    atfork.atfork(child=log_in_child)
else:
    os.register_at_fork(after_in_child=log_in_child)

import logging  # after the registration
from atfork.testing import ChildTimeoutError, run_in_child

class SlowStream:
    '''In the parent, the first write takes for ever (under the handler lock).'''
    def __init__(self):
        self.lines = []
        self.parent = os.getpid()
    def write(self, text):
        self.lines.append(text)
        if os.getpid() == self.parent and len(self.lines) == 1:
            threading.Event().wait()
    def flush(self):
        pass

stream = SlowStream()
logging.getLogger("hook").addHandler(logging.StreamHandler(stream))
threading.Thread(target=logging.getLogger("hook").warning, args=("parent",), daemon=True).start()
while not stream.lines:
    time.sleep(0.01)
try:
    print(run_in_child(lambda: stream.lines[1:], timeout={hang!r}), flush=True)
except ChildTimeoutError as exc:
    print("hang", exc.stack, flush=True)
os._exit(0)  # logging.shutdown() would wait for the stuck thread's handler lock
"""


def test_child_hook_registered_before_logging_was_imported() -> None:
    """Case 6: a child hook that logs, registered with os.register_at_fork
    before the program imported logging, runs before logging's own child
    reinitialisation and hangs on the handler lock another thread held;
    registered with atfork.atfork(), it runs after it (the core does this)."""
    source = CHILD_HOOK_BEFORE_LOGGING
    plain, fixed = side_by_side(
        partial(run_python, source.format(hang=HANG), timeout=60),
        partial(
            run_python,
            source.format(hang=SUCCESS).replace('sys.argv[-1] == "atfork"', "True"),
            timeout=60,
        ),
    )
    assert plain.stdout.startswith("hang"), plain.stdout + plain.stderr
    assert "in log_in_child" in plain.stdout
    assert "['from the child hook\\n']\n" == fixed.stdout, fixed.stderr


STRUCTLOG = """
import structlog

class SlowFile:
    '''In the parent, the first write takes for ever (under structlog's lock).'''
    def __init__(self):
        self.lines = []
    def write(self, text):
        self.lines.append(text)
        if os.getpid() == PARENT and len(self.lines) == 1:
            threading.Event().wait()
    def flush(self):
        pass

out = SlowFile()
logger = structlog.{kind}(out)
threading.Thread(target=logger.msg, args=("parent",), daemon=True).start()
wait_for(lambda: out.lines)

def child():
    logger.msg("child")
    return [line.strip() for line in out.lines if line.strip()]

report(outcome(child))
"""


@pytest.mark.parametrize("kind", ["PrintLogger", "WriteLogger"])
def test_structlog_file_lock(kind: str) -> None:
    """Case 7: structlog's per-file lock, held by a thread writing at fork,
    hangs the child; with the integration the child writes at once."""
    pytest.importorskip("structlog", reason="structlog is not installed")
    plain, fixed = without_and_with(STRUCTLOG.format(kind=kind), ("logging",))
    assert "hang" == plain["outcome"]
    assert "in msg" in plain["stack"]
    assert {"outcome": "ok", "result": ["parent", "child"]} == fixed


def test_disable_restores_the_hang() -> None:
    """After disable(), a child forked while a handler lock is held hangs
    again, as without the integration."""
    body = PRIVATE_LOCK.format(kind="Lock", in_emit=True).replace(
        "report(outcome(child))",
        "import atfork.integrations.logging as integration\n"
        "integration.enable()\n"
        "integration.disable()\n"
        "report(outcome(child), enabled=integration.is_enabled())",
    )
    found = run(body)
    assert ("hang", False) == (found["outcome"], found["enabled"])


def test_enable_is_idempotent() -> None:
    """enable() twice registers one hook; disable() twice is harmless."""
    assert_idempotent(atfork_logging)


def test_queue_listener_start_is_wrapped_only_while_enabled() -> None:
    """enable() wraps QueueListener.start to note the listeners it starts;
    disable() puts the standard library's back."""
    import logging.handlers

    original = logging.handlers.QueueListener.start
    atfork_logging.enable()
    try:
        assert logging.handlers.QueueListener.start is not original
        assert original is logging.handlers.QueueListener.start.__wrapped__  # type: ignore[attr-defined]
    finally:
        atfork_logging.disable()
    assert logging.handlers.QueueListener.start is original


def test_enabled_by_name() -> None:
    """atfork.integrations.enable("logging") enables this module."""
    atfork.integrations.enable("logging")
    assert atfork_logging.is_enabled()


def test_options_are_checked() -> None:
    """A misspelt option, or one of the wrong type, fails loudly."""
    with pytest.raises(TypeError):
        atfork_logging.enable(rotation=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="shared_rotation must be a bool, not int"):
        atfork_logging.enable(shared_rotation=1)  # type: ignore[arg-type]
    assert not atfork_logging.is_enabled()


def test_locks_after_the_fork() -> None:
    """In the parent, the handler locks taken in prepare are free again and
    a private lock another thread holds is still held; in the child, both
    are free."""
    handler = logging.Handler()
    held = threading.Lock()
    handler.held = held  # type: ignore[attr-defined]
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with held:
            holding.set()
            done.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    lock = handler.lock
    assert lock is not None
    try:
        atfork_logging.enable()
        in_child = run_in_child(lambda: (lock.acquire(False), held.acquire(False)))
        assert (True, True) == in_child
        assert lock.acquire(False)
        lock.release()
        assert held.locked()
    finally:
        done.set()
        thread.join()


def test_rlock_held_by_the_forking_thread_stays_held() -> None:
    """An RLock the forking thread holds stays its own in the child: the
    thread can release it there."""
    handler = logging.Handler()
    guard = threading.RLock()
    handler.guard = guard  # type: ignore[attr-defined]
    atfork_logging.enable()

    def release() -> bool:
        guard.release()
        return guard.acquire(False)

    with guard:
        assert run_in_child(release)
        assert guard._is_owned()  # type: ignore[attr-defined]


ROTATION = """\
import collections, glob, logging, logging.handlers, os, sys, time
import atfork.integrations.logging
from atfork.testing import wait_child

base = os.path.join({tmp!r}, "app.log")
if {timed!r}:
    handler = logging.handlers.TimedRotatingFileHandler(base, when="S")
else:
    handler = logging.handlers.RotatingFileHandler(base, maxBytes=2000, backupCount=10_000)
log = logging.getLogger("rotating")
log.addHandler(handler)
if {shared!r}:
    atfork.integrations.logging.enable(shared_rotation=True)

def write(name):
    # Log 500 lines, or for 2.2 s (over two rotations by time).
    end = time.monotonic() + 2.2 if {timed!r} else 0
    i = 0
    while i < 500 or time.monotonic() < end:
        log.warning("%s-%d", name, i)
        i += 1
        if {timed!r}:
            time.sleep(0.001)
    return i

start_reading, start_writing = os.pipe()
counts_reading, counts_writing = os.pipe()
children = []
for number in range(4):
    pid = os.fork()
    if pid == 0:
        os.close(start_writing)
        os.read(start_reading, 1)  # all start together
        os.write(counts_writing, b"%d\\n" % write("c%d" % number))
        os._exit(0)
    children.append(pid)
os.close(start_writing)
written = write("p")
for pid in children:
    wait_child(pid)
os.close(counts_writing)
with open(counts_reading) as counts:
    written += sum(map(int, counts.read().split()))
handler.close()
lines = collections.Counter()
for path in glob.glob(base + "*"):
    if not path.endswith(".lock"):
        with open(path) as f:
            lines.update(f.read().split())
sys.stderr.write("%d %d %d" % (sum(lines.values()), len(lines), written))
"""


def rotate(tmp: str, *, timed: bool, shared: bool) -> tuple[int, int, int]:
    """Run the rotation scenario: (lines found, distinct lines, lines written)."""
    found = run_python(ROTATION.format(tmp=tmp, timed=timed, shared=shared), timeout=60)
    assert 0 == found.returncode, found.stderr
    counted, distinct, written = map(int, found.stderr.split()[-3:])
    return counted, distinct, written


def test_rotation_loses_lines_across_forked_processes(tmp_path: os.PathLike[str]) -> None:
    """Forked processes sharing a RotatingFileHandler lose lines: one rotates
    while the others write to the renamed file and rotate it away. (The race
    is likely, not certain, and less so on a busy machine: up to 20 attempts.)"""
    for attempt in range(20):
        directory = os.path.join(os.fspath(tmp_path), str(attempt))
        os.mkdir(directory)
        counted, distinct, written = rotate(directory, timed=False, shared=False)
        if counted < written:
            break
    assert distinct < written


@pytest.mark.parametrize("timed", [False, True])
def test_shared_rotation_keeps_every_line(tmp_path: os.PathLike[str], timed: bool) -> None:
    """With shared_rotation=True, every line written by the parent and its
    children is in the log files exactly once, rotating by size or time."""
    counted, distinct, written = rotate(os.fspath(tmp_path), timed=timed, shared=True)
    assert (written, written) == (counted, distinct)


def test_shared_rotation_reaches_later_handlers_and_ends(tmp_path: os.PathLike[str]) -> None:
    """A rotating handler created after enable(shared_rotation=True) rotates
    under the lock from the next fork on; disable() gives it its own emit
    back."""
    import logging.handlers

    atfork_logging.enable(shared_rotation=True)
    path = os.path.join(os.fspath(tmp_path), "later.log")
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=100)
    try:
        assert "emit" not in vars(handler)
        run_in_child(lambda: None)
        assert "emit" in vars(handler)
        assert os.path.exists(path + ".lock")
        atfork_logging.disable()
        assert "emit" not in vars(handler)
    finally:
        handler.close()


MODULE_LOCK_BUSY = """
handler = logging.StreamHandler(open(os.devnull, "w"))
logging.getLogger("config").addHandler(handler)
module_lock = logging._lock
holding, forking = threading.Event(), threading.Event()
# The last prepare callback of the fork (highest priority: last in prepare).
atfork.atfork(prepare=forking.set, priority=1_000_000)

def configure():
    # As logging.config.dictConfig does: the module lock, then handler locks,
    # the second one once the fork's prepare phase ran (and the standard
    # library waits for the module lock).
    with module_lock:
        holding.set()
        if not forking.wait(30):
            raise RuntimeError("no fork started")
        with handler.lock:
            handler.flush()

threading.Thread(target=configure, daemon=True).start()
holding.wait()

def child():
    logging.getLogger("config").warning("child")
    return "logged"

report(outcome(child))
"""


def test_fork_while_logging_is_configured() -> None:
    """A fork while another thread holds logging's module lock and is about
    to take a handler lock (as logging.config does) completes: the prepare
    phase takes no handler lock then, which would deadlock with that thread
    while the standard library waits for the module lock."""
    assert {"outcome": "ok", "result": "logged"} == run(MODULE_LOCK_BUSY, ("logging",))
