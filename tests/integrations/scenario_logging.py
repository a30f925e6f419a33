"""Fork scenarios run in a fresh interpreter, without and with integrations
(shared by test_logging.py and test_stdio.py).

A scenario is Python source appended to ``PROLOGUE``. It sets up threads
that hold locks or block on full pipes, then calls ``report(outcome(child),
...)``: ``outcome`` forks with :func:`atfork.testing.run_in_child` and a short
deadline, so a child that hangs is killed and its stack recorded. The result
travels back as one JSON line on stderr, and the interpreter ends with
``os._exit``.
"""

from __future__ import annotations

import json
import textwrap
import threading
from typing import Any, Callable, TypeVar

from atfork.testing import run_python

T = TypeVar("T")

#: How long a child may take before it counts as hung, in a run that
#: expects the hang (without the integrations) ...
HANG = 3.0
#: ... and in a run that expects success: the child needs milliseconds.
SUCCESS = 30.0

PROLOGUE = '''\
import json, logging, os, platform, select, sys, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads (3.12+)
import atfork.integrations
from atfork.testing import ChildTimeoutError, run_in_child

INTEGRATIONS = {integrations!r}
LATE = {late!r}
PARENT = os.getpid()
if not LATE:
    atfork.integrations.enable(*INTEGRATIONS)


# The write system call's number, where /proc/<tid>/wchan names no function.
WRITE_SYSCALL = dict(x86_64="1", aarch64="64", arm64="64").get(platform.machine())


def in_pipe_write(native_id):
    """Whether thread native_id sleeps in the kernel, writing to a pipe."""
    task = "/proc/self/task/%d/" % native_id
    try:
        with open(task + "wchan") as f:
            if "pipe_write" in f.read():
                return True
        with open(task + "syscall") as f:
            return f.read().split()[0] == WRITE_SYSCALL
    except (OSError, IndexError):
        return False


def block_writing(fd, write):
    """Call write() in a thread and return once it is blocked in the kernel
    on pipe fd, which nobody reads: the pipe is full and the thread sleeps
    in its write (what the kernel says of it decides, not a delay)."""
    native, returned = [], threading.Event()

    def target():
        native.append(threading.get_native_id())
        try:
            write()
        finally:
            returned.set()

    threading.Thread(target=target, daemon=True).start()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if returned.is_set():
            raise AssertionError("write() returned (or raised): the pipe did not fill")
        if native and in_pipe_write(native[0]) and not select.select([], [fd], [], 0)[1]:
            return
        time.sleep(0.002)  # polling the kernel's answer
    raise AssertionError("write() did not block in 30 s")


def drain_after_fork(fd):
    """Read pipe fd from the next fork on (in the parent: the writer must
    still be blocked when the process forks); return the bytes read so far
    (growing)."""
    got = bytearray()

    def read():
        while True:
            data = os.read(fd, 65536)
            if not data:
                return
            got.extend(data)

    def start():
        if not started:
            started.append(threading.Thread(target=read, daemon=True))
            started[0].start()

    started = []
    os.register_at_fork(after_in_parent=start)
    return got


def fork_while_blocked(read_end, write_end, write, child):
    """Block write() (200000 "p" bytes) on the pipe, fork and run child()
    (which writes "child <pid>" and a newline to the pipe and returns its
    pid) while the pipe drains; report how often the child's line and the
    parent's bytes arrived. The child's line may land inside the parent's
    bytes (a write that big is not atomic): the parent's bytes are counted."""
    block_writing(write_end, write)
    got = drain_after_fork(read_end)
    found = outcome(child)
    line = b"child %d\\n" % found.get("result", 0)
    hung = found["outcome"] == "hang"
    wait_for(lambda: (hung or line in got) and got.count(b"p") == 200_000)
    report(found, lines=got.count(line), parent=got.count(b"p"))


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        time.sleep(0.01)
    return predicate()


def outcome(child):
    """Fork and run child(); 'hang' if it is still running at the deadline."""
    if LATE:
        atfork.integrations.enable(*INTEGRATIONS)
    try:
        result = run_in_child(child, timeout={success!r} if INTEGRATIONS else {hang!r})
    except ChildTimeoutError as exc:
        return dict(outcome="hang", stack=exc.stack)
    return dict(outcome="ok", result=result)


def report(found, **extra):
    """Send the result, and end at once: stuck threads hold locks that
    exit-time code (logging.shutdown, stream flushes) would wait for."""
    found.update(extra)
    os.write(2, ("\\n" + json.dumps(found) + "\\n").encode())
    os._exit(0)
'''


def run(
    body: str,
    integrations: tuple[str, ...] = (),
    *,
    late: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run a scenario once; ``late`` enables the integrations just before
    the fork rather than first thing (handlers then exist at enable())."""
    source = PROLOGUE.format(integrations=integrations, late=late, hang=HANG, success=SUCCESS)
    run = run_python(source + textwrap.dedent(body), timeout=60, env=env)
    assert not run.timed_out, run.stack
    assert 0 == run.returncode, run.stderr
    found: dict[str, Any] = json.loads(run.stderr.strip().splitlines()[-1])
    return found


def side_by_side(*calls: Callable[[], T]) -> list[T]:
    """Call each of ``calls`` in a thread of its own; their results.

    Plain threads: concurrent.futures.thread would register a before-fork
    hook (a plain lock) in the test process, which deadlocks a fork made
    inside a prepare callback (tests/test_dispatch.py has one).
    """
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def call(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as exc:  # noqa: BLE001  (raised again below)
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def without_and_with(
    body: str, integrations: tuple[str, ...], *, late: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a scenario without the integrations and with them, side by side."""
    plain, fixed = side_by_side(lambda: run(body), lambda: run(body, integrations, late=late))
    return plain, fixed


def assert_idempotent(integration: Any) -> None:
    """enable() twice registers one hook; disable() twice is harmless."""
    integration.enable()
    hook = integration._hook
    integration.enable()
    assert hook is integration._hook
    assert integration.is_enabled()
    integration.disable()
    integration.disable()
    assert not integration.is_enabled()
    assert hook is not None
    assert not hook.active
