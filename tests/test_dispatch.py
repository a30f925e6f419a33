"""Fork-time behaviour: errors, re-entrancy, threads, stdlib order (atfork._dispatch)."""

from __future__ import annotations

import _warnings
import ctypes
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import traceback
from typing import Any, Callable

import pytest

import atfork
from atfork.testing import ChildCallbackError, run_in_child, run_python, wait_child


def describe(args: Any) -> tuple[str, str, Any]:
    return (args.exc_type.__name__, args.err_msg, args.object)


# CPython's own reports of os.register_at_fork callbacks: the callback is
# the object up to 3.13, and part of the message from 3.14 on (gh-129354).
OBJECT_IN_MESSAGE = sys.version_info >= (3, 14)


def reported(
    error: str, phase: str, hook: atfork.Hook, *, active: bool = True
) -> tuple[str, str, Any]:
    """What describe() gives for the report of ``hook``'s failed ``phase``
    callback on this Python (``active``: the hook's state when reported)."""
    message = f"Exception ignored in atfork {phase} callback"
    if OBJECT_IN_MESSAGE:
        text = repr(hook)
        if not active:
            text = text.replace(" inactive>", " active>")
        return (error, f"{message} {text}", None)
    return (error, message, hook)


# -- errors ------------------------------------------------------------------


def fork_with_hook_and_collect(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], Any]:
    """Fork by hand with a recording sys.unraisablehook (the child inherits
    it); return what the child's hook saw, and the child's result."""
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (runs in a child that exits at once)
        found = [(a.exc_type.__name__, a.err_msg, repr(a.object)) for a in seen]
        os.write(write, json.dumps(found).encode())
        os._exit(0)
    os.close(write)
    assert 0 == wait_child(pid, timeout=30)
    reports = [tuple(found) for found in json.loads(os.read(read, 100000))]
    os.close(read)
    return reports, seen


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, SystemExit])
def test_child_error_is_reported_and_the_rest_still_run(
    error: type[BaseException], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """An exception (BaseException included) from a child callback is reported; later ones run."""
    marker = tmp_path / "after"

    def boom() -> None:
        raise error("boom")

    bad = atfork.atfork(child=boom, name="bad")
    atfork.atfork(child=marker.touch)
    reports, parent_reports = fork_with_hook_and_collect(monkeypatch)
    expected = reported(error.__name__, "child", bad)
    assert [(*expected[:2], repr(expected[2]))] == reports
    assert marker.exists()
    assert [] == parent_reports


def test_prepare_error_skips_that_hooks_parent_and_child(unraisable: list[Any]) -> None:
    """A failed prepare is reported; that hook gets no parent/child call, the others do."""
    calls: list[str] = []

    def boom() -> None:
        raise RuntimeError("no")

    bad = atfork.atfork(
        prepare=boom,
        parent=lambda: calls.append("bad parent"),
        child=lambda: calls.append("bad child"),
        name="bad",
    )
    atfork.atfork(
        prepare=lambda: calls.append("good prepare"),
        parent=lambda: calls.append("good parent"),
        child=lambda: calls.append("good child"),
    )
    child_calls = run_in_child(lambda: list(calls))
    assert ["good prepare", "good child"] == child_calls
    assert ["good prepare", "good parent"] == calls
    assert [reported("RuntimeError", "prepare", bad)] == [describe(a) for a in unraisable]


def test_prepare_error_affects_one_fork_only(unraisable: list[Any]) -> None:
    """A hook whose prepare failed once gets all its calls on the next fork."""
    calls: list[str] = []
    fail = [True]

    def prepare() -> None:
        if fail.pop():
            raise RuntimeError("first fork only")
        calls.append("prepare")

    atfork.atfork(prepare=prepare, parent=lambda: calls.append("parent"))
    run_in_child(lambda: None)
    assert [] == calls
    fail.append(False)
    run_in_child(lambda: None)
    assert ["prepare", "parent"] == calls
    assert 1 == len(unraisable)


def test_parent_error_is_reported_with_its_phase(unraisable: list[Any]) -> None:
    """A parent callback's exception names the parent phase and the hook."""

    def boom() -> None:
        raise ValueError("x")

    hook = atfork.atfork(parent=boom, name="p")
    run_in_child(lambda: None)
    assert [reported("ValueError", "parent", hook)] == [describe(a) for a in unraisable]


def raised_by(args: Any) -> tuple[str, str]:
    """The name of the hook a report is about, and the exception it carries
    as its last traceback line (a child's report comes back as the text of
    a ChildCallbackError)."""
    text = f"{args.err_msg} {args.object!r} {args.exc_value}"
    if args.exc_type is ChildCallbackError:
        error = str(args.exc_value).rstrip().splitlines()[-1]
    else:
        error = "".join(traceback.format_exception_only(args.exc_type, args.exc_value)).strip()
    names = re.findall(r"<atfork\.Hook '([^']*)'", text)
    return (names[0] if len(names) == 1 else repr(names)), error


@pytest.mark.parametrize("phase", ["prepare", "parent", "child"])
def test_each_report_carries_the_exception_its_own_callback_raised(
    phase: str, unraisable: list[Any]
) -> None:
    """When several callbacks of one phase raise, each is reported once, with its own exception."""
    errors = {"first": ValueError("first"), "second": KeyError("second"), "third": SystemExit(3)}

    def raiser(error: BaseException) -> Callable[[], None]:
        def boom() -> None:
            raise error

        return boom

    for name, error in errors.items():
        callback: dict[str, Any] = {phase: raiser(error)}
        atfork.atfork(**callback, name=name)
    run_in_child(lambda: None)
    expected = [
        ("first", "ValueError: first"),
        ("second", "KeyError: 'second'"),
        ("third", "SystemExit: 3"),
    ]
    if phase == "prepare":
        expected.reverse()
    assert expected == [raised_by(args) for args in unraisable]
    if phase != "child":
        assert [errors[name] for name, _ in expected] == [a.exc_value for a in unraisable]


def test_default_report_names_hook_and_phase() -> None:
    """With the default sys.unraisablehook, stderr names the hook, the phase and the error."""
    result = run_python(
        textwrap.dedent("""
        import os, atfork
        from atfork.testing import wait_child
        def explode():
            raise ZeroDivisionError("in the child")
        atfork.atfork(child=explode, name="my-hook")
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        wait_child(pid)
    """)
    )
    assert 0 == result.returncode, result.stderr
    sep = " " if OBJECT_IN_MESSAGE else ": "
    assert f"Exception ignored in atfork child callback{sep}<atfork.Hook 'my-hook'" in result.stderr
    assert "ZeroDivisionError: in the child" in result.stderr


def test_broken_unraisablehook_does_not_break_the_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sys.unraisablehook that raises itself does not stop the other callbacks."""
    calls: list[str] = []

    def broken_hook(args: Any) -> None:
        raise RuntimeError("broken hook")

    def boom() -> None:
        raise ValueError

    monkeypatch.setattr(sys, "unraisablehook", broken_hook)
    atfork.atfork(prepare=boom)
    atfork.atfork(parent=lambda: calls.append("parent"), child=lambda: calls.append("child"))
    assert ["child"] == run_in_child(lambda: list(calls))
    assert ["parent"] == calls


def test_nothing_is_logged_through_logging(unraisable: list[Any]) -> None:
    """The fork machinery reports failures without going through logging."""
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        atfork.atfork(prepare=lambda: 1 / 0, parent=lambda: None)
        run_in_child(lambda: None)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert 1 == len(unraisable)
    assert [] == records


# -- re-entrancy -------------------------------------------------------------


def test_callbacks_may_register_and_unregister(unraisable: list[Any]) -> None:
    """Callbacks of every phase register and unregister hooks without deadlock."""
    made: list[atfork.Hook] = []

    def churn() -> None:
        hook = atfork.atfork(child=lambda: None)
        made.append(hook)
        hook.unregister()
        made.append(atfork.atfork(parent=lambda: None))

    atfork.atfork(prepare=churn, parent=churn, child=churn)
    assert 4 == run_in_child(lambda: len(made))  # two by prepare, two by child
    assert 4 == len(made)  # two by prepare, two by parent
    assert [False, True, False, True] == [h.active for h in made]
    assert [] == unraisable


def fork_inside_prepare() -> tuple[list[list[str]], list[str], list[str]]:
    calls: list[str] = []
    inner_child_calls: list[list[str]] = []

    def prepare() -> None:
        calls.append("prepare")
        if len(calls) == 1:
            inner_child_calls.append(run_in_child(lambda: list(calls), timeout=10))

    atfork.atfork(
        prepare=prepare, parent=lambda: calls.append("parent"), child=lambda: calls.append("child")
    )
    child_calls = run_in_child(lambda: list(calls), timeout=20)
    return inner_child_calls, child_calls, calls


def test_fork_inside_prepare_does_not_recurse() -> None:
    """A fork started from a prepare callback runs no atfork callbacks at all.
    (In a child: a before-fork hook of another module taking a lock would make
    such a fork wait for ever, and this test must not hang the run.)"""
    inner_child_calls, child_calls, calls = run_in_child(fork_inside_prepare, timeout=60)
    assert [["prepare"]] == inner_child_calls
    assert ["prepare", "child"] == child_calls
    assert ["prepare", "parent"] == calls


PREPARE_USES_AN_EXECUTOR = """
import atfork
from atfork.testing import run_in_child
def prepare():
    # Submitting takes concurrent.futures' global shutdown lock, which its own
    # before-fork hook holds during the fork.
    print(executor.submit(lambda: "submitted").result(), flush=True)
atfork.atfork(prepare=prepare)
import concurrent.futures  # imported after atfork, as programs do
executor = concurrent.futures.ThreadPoolExecutor(1)
run_in_child(lambda: None, timeout=10)
print("forked", flush=True)
"""


def test_prepare_runs_before_concurrent_futures_takes_its_lock() -> None:
    """A prepare callback may use a thread pool, whatever the import order: it
    runs before concurrent.futures' own before-fork hook takes its lock."""
    result = run_python(PREPARE_USES_AN_EXECUTOR, timeout=30)
    assert (0, "submitted\nforked\n") == (result.returncode, result.stdout), result.stderr


def test_fork_inside_child_callback_is_a_full_cycle() -> None:
    """A fork started from a child callback gives the grandchild a full cycle."""
    calls: list[str] = []
    grandchild: list[list[str]] = []
    forked: list[bool] = []

    def child() -> None:
        calls.append("child")
        if not forked:
            forked.append(True)
            grandchild.append(run_in_child(lambda: list(calls)))

    atfork.atfork(
        prepare=lambda: calls.append("prepare"), parent=lambda: calls.append("parent"), child=child
    )
    in_child = run_in_child(lambda: (list(calls), grandchild[0]))
    # child: prepare, child (forks: prepare, parent in the child), grandchild: ... child
    assert ["prepare", "child", "prepare", "parent"] == in_child[0]
    assert ["prepare", "child", "prepare", "child"] == in_child[1]
    assert ["prepare", "parent"] == calls


def test_fork_inside_parent_callback_is_a_full_cycle() -> None:
    """A fork started from a parent callback is an ordinary fork."""
    calls: list[str] = []
    grandchild: list[list[str]] = []
    forked: list[bool] = []

    def parent() -> None:
        calls.append("parent")
        if not forked:
            forked.append(True)
            grandchild.append(run_in_child(lambda: list(calls)))

    atfork.atfork(
        prepare=lambda: calls.append("prepare"), parent=parent, child=lambda: calls.append("child")
    )
    run_in_child(lambda: None)
    assert ["prepare", "parent", "prepare", "child"] == grandchild[0]
    assert ["prepare", "parent", "prepare", "parent"] == calls


# -- threads -----------------------------------------------------------------


def test_registration_does_not_wait_for_a_fork_in_progress() -> None:
    """A prepare callback may wait for another thread that registers a hook."""
    registered = threading.Event()
    made: list[atfork.Hook] = []

    def register() -> None:
        made.append(atfork.atfork(child=lambda: None))
        registered.set()

    def prepare() -> None:
        thread = threading.Thread(target=register)
        thread.start()
        assert registered.wait(10), "registration waited for the fork"
        thread.join()

    atfork.atfork(prepare=prepare)
    run_in_child(lambda: None, timeout=20)
    assert made[0].active


def test_two_threads_forking_at_once_keep_prepare_with_parent_and_child() -> None:
    """Concurrent forks, with registrations changing meanwhile, pair every parent/child
    call with a prepare of the same fork and thread, and every prepare with one of them."""
    local = threading.local()
    violations: list[str] = []
    stop = threading.Event()

    def register(tag: int) -> atfork.Hook:
        def prepare() -> None:
            local.state[tag] = "prepared"

        def after(phase: str) -> None:
            if local.state.get(tag) != "prepared":
                violations.append(f"{phase} of hook {tag} without its prepare")
            local.state[tag] = "done"

        return atfork.atfork(
            prepare=prepare, parent=lambda: after("parent"), child=lambda: after("child")
        )

    def check_all_done() -> None:
        undone = [tag for tag, state in local.state.items() if state != "done"]
        if undone:
            violations.append(f"prepare without parent/child for hooks {undone}")

    def check_in_child() -> list[str]:
        check_all_done()
        return violations

    def fork_once() -> list[str]:
        local.state = {}
        child_violations = run_in_child(check_in_child)
        check_all_done()
        return child_violations

    for tag in range(5):
        register(tag)
    errors: list[BaseException] = []

    def forker() -> None:
        try:
            for _ in range(40):
                assert [] == fork_once()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def churner() -> None:
        tag = 100
        while not stop.is_set():
            hook = register(tag)
            if tag >= 120:  # twenty stay registered, the rest come and go
                hook.unregister()
            tag += 1

    threads = [threading.Thread(target=forker) for _ in range(2)]
    churn = threading.Thread(target=churner)
    churn.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stop.set()
    churn.join(10)
    assert [] == errors
    assert [] == violations


# -- the standard library first ---------------------------------------------

STDLIB_ORDER = """
import os, sys, threading, time

def child_logs():
    logging.getLogger("scenario").warning("logged by the child hook")

if MODE == "atfork":
    import atfork
    atfork.atfork(child=child_logs)
else:
    os.register_at_fork(after_in_child=child_logs)

import logging  # the program imports logging after registering its hook

emitting = threading.Event()

class Slow(logging.Handler):
    def emit(self, record):
        if threading.current_thread() is threading.main_thread():
            sys.stdout.write("child: " + record.getMessage() + "\\n")
            sys.stdout.flush()
        else:
            emitting.set()
            threading.Event().wait()  # holds the handler lock, mid-emit, for ever

logging.getLogger("scenario").addHandler(Slow())
threading.Thread(target=logging.getLogger("scenario").warning, args=("slow",), daemon=True).start()
emitting.wait()
pid = os.fork()
if pid == 0:
    os._exit(0)
deadline = time.monotonic() + DEADLINE
while time.monotonic() < deadline:
    if os.waitpid(pid, os.WNOHANG)[0]:
        print("child finished")
        break
    time.sleep(0.01)
else:
    os.kill(pid, 9)
    print("child hung")
sys.stdout.flush()
os._exit(0)  # the slow handler still holds its lock: logging.shutdown would wait
"""


def stdlib_order(mode: str, deadline: float) -> str:
    source = f"MODE = {mode!r}; DEADLINE = {deadline}\n" + STDLIB_ORDER
    result = run_python(source, timeout=deadline + 30)
    assert 0 == result.returncode, result.stderr
    return result.stdout


def test_child_hook_before_logging_import_hangs_with_register_at_fork() -> None:
    """Without atfork, a child hook registered before `import logging` hangs on a handler lock."""
    assert "child hung" in stdlib_order("plain", deadline=3)


def test_child_hook_runs_after_stdlib_reinit_whatever_the_import_order() -> None:
    """With atfork, the same child hook logs at once: it runs after logging's reinit."""
    out = stdlib_order("atfork", deadline=30)
    assert "child: logged by the child hook\nchild finished\n" == out


IMPORTED_BY_ATFORK = """
import sys
before = set(sys.modules)
import atfork
print(" ".join(sorted(set(sys.modules) - before)))
"""
# What the four standard modules import by themselves (logging imports
# inspect on 3.14, through traceback's colours).
IMPORTED_BY_THE_HOOK_MODULES = """
import sys
before = set(sys.modules)
import concurrent.futures.thread, logging, random, threading
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_import_atfork_imports_the_stdlib_modules_with_fork_hooks_and_no_inspect() -> None:
    """`import atfork` imports the four standard modules whose fork hooks must
    run before its own, and not inspect and what inspect imports, unless
    those modules import them."""
    imported = set(run_python(IMPORTED_BY_ATFORK, timeout=30).stdout.split())
    theirs = set(run_python(IMPORTED_BY_THE_HOOK_MODULES, timeout=30).stdout.split())
    hooks = {"concurrent.futures.thread", "logging", "random", "threading"}
    assert (hooks, set()) == (hooks & imported, {"inspect", "ast", "dis"} & imported - theirs)


PREPARE_BEFORE_LOGGING_LOCK = """
import logging, threading, atfork
from atfork.testing import run_in_child

def prepare():
    # logging takes its module lock in its own prepare; ours runs first, so a
    # thread may still need that lock to finish what this callback waits on.
    thread = threading.Thread(target=logging.getLogger, args=("from-thread",))
    thread.start()
    thread.join(5)
    print("alive" if thread.is_alive() else "joined", flush=True)

atfork.atfork(prepare=prepare)
run_in_child(lambda: None)
"""


def test_prepare_runs_before_logging_takes_its_lock() -> None:
    """Every prepare callback runs before logging's own prepare takes the module lock."""
    result = run_python(PREPARE_BEFORE_LOGGING_LOCK, timeout=60)
    assert (0, "joined\n") == (result.returncode, result.stdout), result.stderr


# -- CPython's warnings lock (3.14+) ------------------------------------------

# Python/_warnings.c guards the filters with a lock from 3.14 on, which the
# child does not reinitialise.
WARNINGS_LOCK = hasattr(_warnings, "_acquire_lock")
needs_warnings_lock = pytest.mark.skipif(
    not WARNINGS_LOCK, reason="not on this Python: no warnings lock before 3.14"
)

# A thread warns without pause while the main thread forks in batches; each
# child warns once and exits. The children are reaped with a deadline by a
# copy of wait_child (importing atfork.testing would import atfork).
# Without atfork, batches go on until a child hangs or CAP children ran.
WARN_WHILE_FORKING = """
import json, os, signal, sys, threading, time, warnings
if MODE == "atfork":
    import atfork

warnings.filterwarnings("ignore", category=DeprecationWarning)  # fork with threads
warnings.filterwarnings("ignore", "churn")
stop = threading.Event()
turn = threading.Event()  # set by the thread at each round: each fork finds it elsewhere

def churn():
    while not stop.is_set():
        with warnings.catch_warnings():
            warnings.warn("churn")
        turn.set()

def reaped(pid, deadline):
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return True
        time.sleep(0.01)
    return False

def finished(pid, deadline):
    if reaped(pid, deadline):
        return True
    os.kill(pid, signal.SIGKILL)
    reaped(pid, time.monotonic() + 5)  # killed: it ends at once
    return False

threading.Thread(target=churn, daemon=True).start()
forks = hung = 0
while forks < FORKS or (MODE == "plain" and not hung and forks < CAP):
    pids = []
    for _ in range(10):
        turn.clear()
        turn.wait(5)
        pid = os.fork()
        if pid == 0:
            warnings.warn("churn")
            os._exit(0)
        pids.append(pid)
    forks += len(pids)
    deadline = time.monotonic() + 5
    hung += sum(not finished(pid, deadline) for pid in pids)
stop.set()
print(json.dumps([forks, hung]))
"""


def warn_while_forking(mode: str, forks: int) -> tuple[int, int]:
    """How many children were forked and how many hung at their first warning."""
    source = f"MODE = {mode!r}; FORKS = {forks}; CAP = 300\n" + WARN_WHILE_FORKING
    result = run_python(source, timeout=200)
    assert 0 == result.returncode, result.stderr
    forked, hung = json.loads(result.stdout)
    return forked, hung


@needs_warnings_lock
def test_child_forked_while_a_thread_warns_hangs_without_atfork() -> None:
    """Without atfork, a child forked while another thread warns may hang at its first warning."""
    forked, hung = warn_while_forking("plain", forks=0)
    assert 0 < hung, f"no child hung in {forked}"


@needs_warnings_lock
def test_child_forked_while_a_thread_warns_can_warn_with_atfork() -> None:
    """With atfork, no child forked while another thread warns hangs at its first warning."""
    assert (40, 0) == warn_while_forking("atfork", forks=40)


WARN_IN_CALLBACKS = """
import json, os, threading, warnings, atfork
from atfork.testing import wait_child

seen = {}

def warn(place, into=seen):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn(place)
    into[place] = [str(w.message) for w in caught]

def warn_in_a_thread(place):
    # The lock must have been given back: another thread waits for it.
    done = {}
    thread = threading.Thread(target=warn, args=(place, done), daemon=True)
    thread.start()
    thread.join(10)
    seen[place] = done.get(place, "hung")

def parent():
    warn("parent")
    warn_in_a_thread("parent, another thread")

def child():
    warn("child")
    warn_in_a_thread("child, another thread")

atfork.atfork(prepare=lambda: warn("prepare"), parent=parent, child=child)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, json.dumps(seen).encode())
    os._exit(0)
os.close(write)
code = wait_child(pid, timeout=30)
print(json.dumps([code, json.loads(os.read(read, 65536) or b"null"), seen]), flush=True)
os._exit(0)  # a hung thread must not stop the exit
"""


@needs_warnings_lock
def test_callbacks_may_warn() -> None:
    """Callbacks of every phase may warn (the lock is recursive), and other threads started by
    parent and child callbacks too (it was given back before them)."""
    result = run_python(WARN_IN_CALLBACKS, timeout=60)
    assert 0 == result.returncode, result.stderr
    code, child, parent = json.loads(result.stdout)
    assert 0 == code

    def warned(*places: str) -> dict[str, list[str]]:
        return {place: [place] for place in places}

    assert warned("prepare", "parent", "parent, another thread") == parent
    assert warned("prepare", "child", "child, another thread") == child


# -- platforms without fork -------------------------------------------------

NO_FORK = """
import ctypes
import os
import subprocess
del os.fork, os.register_at_fork
import atfork
hook = atfork.atfork(prepare=print, child=print)
with atfork.atfork(parent=print) as other:
    pass
print(hook.active, other.active, hasattr(os, "fork"))
"""


def test_without_fork_registration_works_and_does_nothing() -> None:
    """Where os.fork is missing, importing and registering work and install nothing."""
    result = run_python(NO_FORK, timeout=60)
    assert (0, "True False False\n") == (result.returncode, result.stdout), result.stderr


# -- forks that bypass Python's hooks: check() --------------------------------


def in_raw_child(body: Callable[[], list[Any]]) -> list[Any]:
    """Call ``body`` in a child made by fork() called the way a C extension
    would (no Python fork hooks run; PyDLL keeps the GIL held across the
    call, so the child has it) and return what it returned."""
    read, write = os.pipe()
    pid = int(ctypes.PyDLL(None).fork())
    if pid == 0:  # pragma: no cover  (runs in a child that exits at once)
        os.write(write, json.dumps(body()).encode())
        os._exit(0)
    os.close(write)
    assert 0 == wait_child(pid, timeout=30)
    return list(json.loads(os.read(read, 10000)))


def test_check_runs_child_callbacks_after_a_raw_fork() -> None:
    """After a fork that bypassed the hooks, check() runs the child callbacks once."""
    calls: list[str] = []
    atfork.atfork(prepare=lambda: calls.append("prepare"), child=lambda: calls.append("child"))

    def seen() -> list[Any]:
        return [list(calls), atfork.check(), list(calls), atfork.check(), list(calls)]

    before, ran, after, again, last = run_in_child(lambda: in_raw_child(seen))
    # calls holds what ran in the outer child: prepare, child.
    assert (["prepare", "child"], True, ["prepare", "child", "child"]) == (before, ran, after)
    assert (False, after) == (again, last)


@pytest.mark.skipif(
    sys.version_info >= (3, 13),
    reason="not on this Python: 3.13 aborts in PyOS_AfterFork_Child() without PyOS_BeforeFork()",
)
def test_check_after_pyos_afterfork_child_alone() -> None:
    """A C fork followed by PyOS_AfterFork_Child() alone (as uWSGI with
    --py-call-osafterfork does) runs no atfork callback, for lack of a prepare
    phase; check() then runs them once."""
    calls: list[str] = []
    atfork.atfork(prepare=lambda: calls.append("prepare"), child=lambda: calls.append("child"))

    def seen() -> list[Any]:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return [list(calls), atfork.check(), list(calls), atfork.check()]

    before, ran, after, again = run_in_child(lambda: in_raw_child(seen))
    assert (["prepare", "child"], True, ["prepare", "child", "child"], False) == (
        before,
        ran,
        after,
        again,
    )


def test_check_after_os_fork_does_nothing() -> None:
    """In a child of os.fork() the callbacks ran already: check() returns False."""
    calls: list[str] = []
    atfork.atfork(child=lambda: calls.append("child"))
    assert (False, ["child"]) == run_in_child(lambda: (atfork.check(), list(calls)))
    assert not atfork.check()


# -- fork_origin() ------------------------------------------------------------


def test_fork_origin_outside_a_fork_is_none() -> None:
    """Outside a fork callback there is no origin."""
    assert atfork.fork_origin() is None


def test_fork_origin_of_os_fork() -> None:
    """Callbacks of an os.fork() learn it was one, in prepare, parent and child."""
    seen: list[str | None] = []
    atfork.atfork(
        prepare=lambda: seen.append(atfork.fork_origin()),
        parent=lambda: seen.append(atfork.fork_origin()),
        child=lambda: seen.append(atfork.fork_origin()),
    )
    assert ["os.fork", "os.fork"] == run_in_child(lambda: list(seen))
    assert ["os.fork", "os.fork"] == seen


def exit_with_origin(origin: list[str | None]) -> None:
    sys.exit(0 if origin == ["multiprocessing"] else 3)


@pytest.mark.parametrize("package", ["multiprocessing", "billiard"])
def test_fork_origin_of_multiprocessing(package: str) -> None:
    """A child callback of multiprocessing's (or billiard's) fork start method learns it."""
    seen: list[str | None] = []
    atfork.atfork(child=lambda: seen.append(atfork.fork_origin()))
    if package == "billiard":
        import billiard  # type: ignore[import-untyped]

        process = billiard.Process(target=exit_with_origin, args=(seen,))
    else:
        import multiprocessing

        context: Any = multiprocessing.get_context("fork")
        process = context.Process(target=exit_with_origin, args=(seen,))
    process.start()
    process.join(30)
    assert 0 == process.exitcode


def test_fork_origin_of_subprocess_with_preexec_fn(tmp_path: Any) -> None:
    """A child callback of subprocess with preexec_fn learns the child will exec."""
    marker = tmp_path / "origin"

    def child() -> None:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, str(atfork.fork_origin()).encode())
        os.close(fd)

    atfork.atfork(child=child)
    subprocess.run(["true"], preexec_fn=lambda: None, check=True, timeout=30)
    assert "subprocess" == marker.read_text()


def test_fork_origin_of_check() -> None:
    """Callbacks run by check() learn it."""
    seen: list[str | None] = []
    atfork.atfork(child=lambda: seen.append(atfork.fork_origin()))

    def checked() -> list[Any]:
        atfork.check()
        return seen

    assert ["os.fork", "check"] == run_in_child(lambda: in_raw_child(checked))
