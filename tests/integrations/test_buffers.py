"""Buffered files repaired in place in the child (atfork.integrations._buffers,
used by the stdio and logging integrations): each failure reproduced in a
fresh interpreter without the integrations and gone with them."""

from __future__ import annotations

import builtins
import gc
import inspect
import io
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from free_threading import FREE_THREADED
from scenario_logging import HANG, run, without_and_with

import atfork.integrations
from atfork.integrations import _buffers, stdio
from atfork.integrations import logging as atfork_logging
from atfork.testing import run_python


@pytest.fixture(autouse=True)
def _disabled() -> Iterator[None]:
    yield
    stdio.disable()
    atfork_logging.disable()


HANDLER_FILE = """
import io

read_end, write_end = os.pipe()


class FileOwner(logging.Handler):
    '''Writes to a file of its own (not `stream`), under a lock of its own.'''

    def __init__(self, file):
        super().__init__()
        self._f = file
        self._guard = threading.Lock()

    def emit(self, record):
        with self._guard:
            self._f.write(self.format(record) + "\\n")
            self._f.flush()


log = logging.getLogger("owner")
log.addHandler(FileOwner({make}))


def child():
    log.warning("child %d", os.getpid())
    return os.getpid()


fork_while_blocked(read_end, write_end, lambda: log.warning("p" * 200_000), child)
"""


@pytest.mark.parametrize(
    "make",
    [
        'open(write_end, "w")',
        'io.TextIOWrapper(io.BufferedWriter(io.FileIO(write_end, "w")))',
        'io.BufferedWriter(io.FileIO(write_end, "w"))',
    ],
    ids=["open", "constructed-text", "constructed-binary"],
)
def test_handler_file_in_an_attribute_of_its_own(make: str) -> None:
    """A handler that keeps its file in an attribute other than ``stream``
    hangs the child's first log call when another thread was blocked in that
    file's write at the fork (its BufferedWriter lock is copied held); with
    the logging integration the call returns, the child's record arrives
    once and the parent's whole, once. The file is covered whether open()
    made it after enable() or it was constructed directly."""
    body = HANDLER_FILE.format(make=make)
    if make.startswith("io.BufferedWriter"):
        body = body.replace('self.format(record) + "\\n"', '(self.format(record) + "\\n").encode()')
    plain, fixed = without_and_with(body, ("logging",))
    assert "hang" == plain["outcome"]
    assert "in emit" in plain["stack"]
    assert ("ok", 1, 200_000) == (fixed["outcome"], fixed["lines"], fixed["parent"])


def test_handler_file_with_every_integration() -> None:
    """The issue's case, with logging, stdio and threading all enabled."""
    body = HANDLER_FILE.format(make='open(write_end, "w")')
    fixed = run(body, ("logging", "stdio", "threading"))
    assert ("ok", 1, 200_000) == (fixed["outcome"], fixed["lines"], fixed["parent"])


MODULE_FILE = """
import io

read_end, write_end = os.pipe()
import atfork.integrations.stdio
{setup}
text = isinstance(out, io.TextIOBase)


def put(line):
    out.write(line if text else line.encode())
    out.flush()


def child():
    put("child %d\\n" % os.getpid())
    return os.getpid()


fork_while_blocked(read_end, write_end, lambda: put("p" * 200_000), child)
"""


@pytest.mark.parametrize(
    ("setup", "late"),
    [
        ('out = open(write_end, "w")', False),
        ('out = open(write_end, "w")', True),
        ('out = open(write_end, "wb")', False),
        (
            'out = atfork.integrations.stdio.track(io.BufferedWriter(io.FileIO(write_end, "w")))',
            False,
        ),
    ],
    ids=["open-after-enable", "open-before-enable", "open-binary", "tracked"],
)
def test_module_level_file(setup: str, late: bool) -> None:
    """A module-level file another thread was blocked writing to at the fork
    hangs the child's first write; with the stdio integration it returns,
    whether open() made the file after enable() (noted by the open()
    wrapper), before it (found by the heap scan at enable()), or it was
    constructed directly and given to track()."""
    plain, fixed = without_and_with(MODULE_FILE.format(setup=setup), ("stdio",), late=late)
    assert "hang" == plain["outcome"]
    assert "in put" in plain["stack"]
    assert ("ok", 1, 200_000) == (fixed["outcome"], fixed["lines"], fixed["parent"])


# Redefines the prologue's outcome() for a hang expected with the
# integrations enabled: the short deadline.
EXPECT_HANG = f"""
def outcome(child):
    try:
        return dict(outcome="ok", result=run_in_child(child, timeout={HANG!r}))
    except ChildTimeoutError as exc:
        return dict(outcome="hang", stack=exc.stack)
"""


def test_constructed_file_not_tracked_still_hangs() -> None:
    """The documented limit: a BufferedWriter constructed directly after
    enable(), held by no handler and no standard stream and not given to
    track(), is not found, and the child still hangs."""
    setup = EXPECT_HANG + 'out = io.BufferedWriter(io.FileIO(write_end, "w"))'
    found = run(MODULE_FILE.format(setup=setup), ("stdio",))
    assert "hang" == found["outcome"]


STDOUT_WRAPPER = """
import io

read_end, write_end = os.pipe()


class Tee:
    '''Installed as sys.stdout: writes to a file of its own.'''

    def __init__(self, file):
        self._file = file

    def write(self, text):
        return self._file.write(text)

    def flush(self):
        self._file.flush()


sys.stdout = Tee(io.TextIOWrapper(io.BufferedWriter(io.FileIO(write_end, "w"))))


def child():
    print("child", os.getpid(), flush=True)
    return os.getpid()


fork_while_blocked(read_end, write_end, lambda: print("p" * 200_000, flush=True), child)
"""


def test_stdout_replaced_by_a_wrapper_holding_a_file() -> None:
    """A wrapper installed as sys.stdout whose own file another thread was
    writing to at the fork hangs the child's print(); with the stdio
    integration print() returns (the wrapper's attributes are looked at)."""
    plain, fixed = without_and_with(STDOUT_WRAPPER, ("stdio",))
    assert "hang" == plain["outcome"]
    assert "in write" in plain["stack"] or "in flush" in plain["stack"]
    assert ("ok", 1, 200_000) == (fixed["outcome"], fixed["lines"], fixed["parent"])


BUFFERED_RANDOM = """
import io

path = os.path.join({tmp!r}, "random-%d.bin" % len(INTEGRATIONS))
entered = threading.Event()


class SlowFile(io.FileIO):
    '''In the parent, a write never returns: the BufferedRandom writing
    through it keeps its lock.'''

    def write(self, data):
        if os.getpid() == PARENT:
            entered.set()
            threading.Event().wait()
        return super().write(data)


class BytesOwner(logging.Handler):
    def __init__(self, file):
        super().__init__()
        self._f = file

    def emit(self, record):
        self._f.write(record.getMessage().encode() + b"\\n")
        self._f.flush()


log = logging.getLogger("random")
log.addHandler(BytesOwner(io.BufferedRandom(SlowFile(path, "w+"))))
threading.Thread(target=log.warning, args=("parent",), daemon=True).start()
entered.wait()


def child():
    log.warning("child")
    with open(path, "rb") as f:
        return f.read().decode()


report(outcome(child))
"""


def test_buffered_random(tmp_path: Path) -> None:
    """A BufferedRandom whose lock another thread held at the fork (its raw
    write never returns in the parent) hangs the child; with the logging
    integration the child writes its record, and not the parent's
    buffered one."""
    plain, fixed = without_and_with(BUFFERED_RANDOM.format(tmp=os.fspath(tmp_path)), ("logging",))
    assert "hang" == plain["outcome"]
    assert {"outcome": "ok", "result": "child\n"} == fixed


PENDING = """\
import io, os, sys
from atfork.testing import wait_child
if {enabled!r}:
    import atfork.integrations
    atfork.integrations.enable("stdio")
folder = {tmp!r}
text = open(os.path.join(folder, "text"), "a")
text.buffer.write(b"buffer-pending ")  # in the BufferedWriter's buffer
text.write("text-pending ")  # in the TextIOWrapper's pending text, above it
binary = open(os.path.join(folder, "binary"), "ab")
binary.write(b"binary-pending ")
both = open(os.path.join(folder, "random"), "a+b")  # a BufferedRandom
both.write(b"random-pending ")
assert (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom) == tuple(
    map(type, (text, binary, both))
)
pid = os.fork()
if pid == 0:
    for f, data in ((text, "child "), (binary, b"child "), (both, b"child ")):
        f.write(data)
        f.flush()
    sys.exit(0)
assert 0 == wait_child(pid)
text.write("parent")
binary.write(b"parent")
both.write(b"parent")
for f in (text, binary, both):
    f.close()
for name in ("text", "binary", "random"):
    with open(os.path.join(folder, name)) as f:
        print(f.read())
"""


@pytest.mark.parametrize("enabled", [False, True])
def test_pending_output_is_written_once(enabled: bool, tmp_path: Path) -> None:
    """Output still in a file's buffers at the fork (the BufferedWriter's and
    the TextIOWrapper's pending text above it) is written by the parent,
    and, without the integration, a second time by the child; with it, once,
    and the child's own output once."""
    found = run_python(PENDING.format(enabled=enabled, tmp=os.fspath(tmp_path)), timeout=30)
    assert 0 == found.returncode, found.stderr
    text, binary, both = found.stdout.splitlines()
    if enabled:
        assert "child buffer-pending text-pending parent" == text
        assert "child binary-pending parent" == binary
        assert "child random-pending parent" == both
    else:
        assert 2 == text.count("buffer-pending") == text.count("text-pending")
        assert 2 == binary.count("binary-pending") == both.count("random-pending")


NOT_REPAIRED = """\
import io, os, sys
import atfork.integrations
from atfork.testing import run_in_child
atfork.integrations.enable("stdio")
memory = io.BufferedWriter(io.BytesIO())  # the child's own memory
memory.write(b"kept")
path = os.path.join({tmp!r}, "read")
with open(path, "wb") as f:
    f.write(b"0123")
reader = open(path, "rb")
reader.read(1)  # the rest is read ahead

def child():
    return memory.raw.getvalue(), memory.flush(), memory.raw.getvalue(), reader.read(3)

print(repr(run_in_child(child)))
"""


def test_memory_files_and_readers_are_left_alone(tmp_path: Path) -> None:
    """A buffered file over memory (the child's own copy) keeps its buffered
    bytes in the child, and a reader keeps its read-ahead."""
    found = run_python(NOT_REPAIRED.format(tmp=os.fspath(tmp_path)), timeout=30)
    assert 0 == found.returncode, found.stderr
    assert "(b'', None, b'kept', b'123')" == found.stdout.strip()


def test_open_is_wrapped_while_enabled_and_restored() -> None:
    """While stdio or logging is enabled, builtins.open and io.open are one
    wrapper with open()'s name and signature; disabling the last of them
    puts the original back."""
    original = builtins.open
    assert io.open is original
    stdio.enable()
    atfork_logging.enable()
    wrapper = builtins.open
    assert wrapper is not original
    assert io.open is wrapper
    assert (original, "open") == (inspect.unwrap(wrapper), wrapper.__name__)
    assert inspect.signature(original) == inspect.signature(wrapper)
    stdio.disable()
    assert builtins.open is wrapper
    atfork_logging.disable()
    assert (original, original) == (builtins.open, io.open)


def test_open_replaced_since_is_left() -> None:
    """disable() leaves an open() that something else installed after
    enable() (it would otherwise undo that)."""
    original = builtins.open
    stdio.enable()

    def other(*args, **kwargs):  # type: ignore[no-untyped-def]
        return original(*args, **kwargs)

    builtins.open = other
    try:
        stdio.disable()
        assert (other, original) == (builtins.open, io.open)
    finally:
        builtins.open = original


def test_what_open_notes(tmp_path: Path) -> None:
    """The open() wrapper notes writers and text files over them, weakly,
    and no reader or unbuffered file."""
    stdio.enable()
    path = tmp_path / "file"
    with open(path, "w") as text, open(path, "ab") as binary, open(path, "r+b") as both:
        noted = [id(f) in _buffers._found for f in (text, binary, both)]
    assert [True, True, True] == noted
    with open(path) as reader, open(path, "rb") as raw_reader, open(path, "wb", 0) as raw:
        noted = [id(f) in _buffers._found for f in (reader, raw_reader, raw)]
    assert [False, False, False] == noted
    with open(path, "w") as f:
        ref = weakref.ref(f)
        key = id(f)
    del f
    gc.collect()
    assert ref() is None
    assert key not in _buffers._found


def test_track_returns_its_argument_and_checks_it(tmp_path: Path) -> None:
    """track() returns the file, holds it weakly, and refuses what it
    cannot repair."""
    memory: Any = io.BytesIO()  # typeshed wants a RawIOBase; any binary file will do
    file = io.BufferedWriter(memory)
    assert file is stdio.track(file)
    assert file is stdio.track(file)
    ref = weakref.ref(file)
    del file
    gc.collect()
    assert ref() is None
    for wrong in (io.BytesIO(), io.StringIO(), io.TextIOWrapper(io.BytesIO()), object()):
        with pytest.raises(TypeError, match="track\\(\\) takes"):
            stdio.track(wrong)
    (tmp_path / "read").write_bytes(b"")
    with open(tmp_path / "read", "rb") as reader, pytest.raises(TypeError, match="Reader"):
        stdio.track(reader)


def test_one_hook_for_both_integrations() -> None:
    """Enabling stdio and logging registers the repair once, above every
    other integration; it stays until both are disabled."""
    atfork.integrations.enable("stdio", "logging")
    hooks = [h for h in atfork.hooks() if h.name == "atfork.integrations._buffers"]
    assert 1 == len(hooks)
    assert max(h.priority for h in atfork.hooks()) == hooks[0].priority
    stdio.disable()
    assert hooks[0].active
    atfork_logging.disable()
    assert not hooks[0].active


LOCKED_OBJECT_MUTEX = """\
import ctypes, os, sys
import atfork.integrations
from atfork.testing import ChildTimeoutError, wait_child

if {enabled!r}:
    atfork.integrations.enable("stdio")
# What CPython leaves when it hands sys.stdout's contended object mutex to
# a waiting thread just before the fork: locked, its owner not in the child.
mutex = ctypes.c_uint8.from_address(id(sys.stdout) + 10)
mutex.value = 1
pid = os.fork()
if pid == 0:
    print("child", flush=True)
    os._exit(0)
mutex.value = 0  # the parent's own, unlocked again before it writes
try:
    print("exit", wait_child(pid, timeout=10), flush=True)
except ChildTimeoutError:
    print("hang", flush=True)
"""


@pytest.mark.parametrize("with_atfork", [False, True])
def test_object_mutex_left_locked_on_the_free_threaded_build(with_atfork: bool) -> None:
    """On 3.14t a file's object mutex (its methods' critical section) can be
    left locked in the child by a thread that is not there: the child's
    first print() hangs without atfork, and works with it."""
    if not FREE_THREADED:
        pytest.skip("not on this Python: a free-threaded build's object mutex")
    found = run_python(LOCKED_OBJECT_MUTEX.format(enabled=with_atfork), timeout=60)
    lines = found.stdout.split("\n")
    if with_atfork:
        assert ["child", "exit 0", ""] == lines, found.stderr
    else:
        assert ["hang", ""] == lines, found.stderr
