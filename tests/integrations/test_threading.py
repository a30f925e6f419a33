"""atfork.integrations.threading: the fork protocol of tracked objects, its
notification, enable()'s options and the diagnostics warning.

The failures the integration fixes are reproduced without atfork, in fresh
interpreters, in test_threading_scenarios.py.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import queue
import re
import sys
import textwrap
import threading
import warnings
import weakref
from collections.abc import Iterator
from typing import Any, Callable, cast

import pytest

import atfork
import atfork.integrations
import atfork.testing
from atfork.integrations import threading as atfork_threading
from atfork.integrations.threading import ForkWithThreadsWarning, track, untrack, was_reset
from atfork.testing import ChildCallbackError, run_in_child, run_python


@pytest.fixture(autouse=True)
def _disabled() -> Iterator[None]:
    """Each test starts and ends with the integration disabled."""
    atfork_threading.disable()
    yield
    atfork_threading.disable()


class Holder:
    """A thread that enters context managers and holds them until released."""

    def __init__(self, *managers: Any) -> None:
        self._managers = managers
        self._held = threading.Event()
        self._release = threading.Event()
        self.thread = threading.Thread(target=self._run, name="holder", daemon=True)

    def _run(self) -> None:
        for manager in self._managers:
            manager.__enter__()
        self._held.set()
        self._release.wait(30)
        for manager in reversed(self._managers):
            manager.__exit__(None, None, None)

    @property
    def holding(self) -> bool:
        return self._held.is_set() and not self._release.is_set()

    def __enter__(self) -> Holder:
        self.thread.start()
        assert self._held.wait(30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release.set()
        self.thread.join(30)


# -- The integration's surface ----------------------------------------------


def test_threading_is_a_builtin_integration() -> None:
    """'threading' is listed and found by name."""
    assert "threading" in atfork.integrations.available()
    assert atfork.integrations.get("threading") is cast(Any, atfork_threading)


def test_enable_and_disable_are_idempotent() -> None:
    """enable() and disable() may be called twice; is_enabled() follows."""
    atfork_threading.enable()
    atfork_threading.enable(warn=True)
    assert atfork_threading.is_enabled()
    atfork_threading.disable()
    atfork_threading.disable()
    assert not atfork_threading.is_enabled()


def test_enable_by_name() -> None:
    """atfork.integrations.enable('threading') enables it."""
    atfork.integrations.enable("threading")
    assert atfork_threading.is_enabled()


def test_enable_validates_its_options() -> None:
    """A non-bool warn or an unknown option is a TypeError."""
    with pytest.raises(TypeError, match="warn must be a bool, not str"):
        atfork_threading.enable(warn="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        atfork_threading.enable(loops=False)  # type: ignore[call-arg]
    assert not atfork_threading.is_enabled()


def test_disable_unregisters_its_hook() -> None:
    """With nothing tracked, disable() leaves no registration behind."""
    before = {hook.name for hook in atfork._registry.registry.hooks()}
    atfork_threading.enable()
    assert "atfork.integrations.threading" in {h.name for h in atfork._registry.registry.hooks()}
    atfork_threading.disable()
    assert before == {hook.name for hook in atfork._registry.registry.hooks()}


def test_the_hook_has_the_threading_priority() -> None:
    """The integration registers at PRIORITY_THREADING."""
    atfork_threading.enable()
    (hook,) = [h for h in atfork._registry.registry.hooks() if h.name.endswith(".threading")]
    assert atfork.integrations.PRIORITY_THREADING == hook.priority


SUPPORTED: list[Callable[[], object]] = [
    threading.Lock,
    threading.RLock,
    threading._PyRLock,  # type: ignore[attr-defined]
    threading.Condition,
    lambda: threading.Condition(threading.Lock()),
    threading.Semaphore,
    threading.BoundedSemaphore,
    threading.Event,
    queue.Queue,
    queue.LifoQueue,
    queue.PriorityQueue,
]


@pytest.mark.parametrize("make", SUPPORTED)
def test_track_returns_the_object_and_holds_it_weakly(make: Callable[[], object]) -> None:
    """track(obj) is obj, and tracking does not keep obj alive."""
    obj = make()
    assert obj is track(obj)
    ref = weakref.ref(obj)
    del obj
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize(
    ("obj", "name"),
    [
        (object(), "builtins.object"),
        (queue.SimpleQueue(), "_queue.SimpleQueue"),
        (multiprocessing.Lock(), "multiprocessing.synchronize.Lock"),
        (asyncio.Lock(), "asyncio.locks.Lock"),
    ],
)
def test_track_rejects_other_types(obj: object, name: str) -> None:
    """Anything else is a TypeError naming what track() takes."""
    with pytest.raises(TypeError, match=rf"track\(\) takes a threading.Lock, .* not {name}$"):
        track(obj)


def test_track_rejects_a_condition_over_another_lock() -> None:
    """A Condition over a lock that is not a threading Lock or RLock is refused."""

    class MyLock:
        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            return True

        def release(self) -> None:
            pass

        def locked(self) -> bool:  # Condition needs it from 3.14 on
            return False

    condition = threading.Condition(MyLock())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"needs the lock of Condition to be a threading\.Lock"):
        track(condition)


def test_track_rejects_a_non_callable_on_reset() -> None:
    """on_reset must be callable."""
    with pytest.raises(TypeError, match="on_reset must be callable, not int"):
        track(threading.Lock(), on_reset=1)  # type: ignore[arg-type]


def test_track_rejects_an_on_reset_that_takes_no_argument() -> None:
    """on_reset is called with the object: one that cannot take it raises TypeError at once."""
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"^on_reset .*too many positional arguments"):
        track(lock, on_reset=lambda: None)  # type: ignore[arg-type,misc]
    assert lock is track(lock, on_reset=lambda lock, *rest: None)


def test_a_tracked_semaphore_keeps_its_name_and_repr() -> None:
    """Counting permits swaps in a subclass that looks the same, and
    untrack() gives the original class back."""
    semaphore = threading.BoundedSemaphore(3)
    semaphore.acquire()
    before = repr(semaphore)
    track(semaphore)
    assert isinstance(semaphore, threading.BoundedSemaphore)
    assert "BoundedSemaphore" == type(semaphore).__name__
    assert before == repr(semaphore)
    semaphore.release()
    untrack(semaphore)
    assert threading.BoundedSemaphore is type(semaphore)
    assert before.replace("value=2/3", "value=3/3") == repr(semaphore)


# -- Locks held by the forking thread ----------------------------------------


def test_fork_inside_with_lock() -> None:
    """A Lock the forking thread holds stays held in the child, so leaving
    the with block releases it without RuntimeError."""
    lock = track(threading.Lock())

    def child() -> tuple[bool, bool]:
        with lock:
            return run_in_child(leave_the_block)

    def leave_the_block() -> tuple[bool, bool]:
        held = not lock.acquire(False)
        lock.release()  # what the with statement does on leaving
        return held, was_reset(lock)

    # The test runs in a child of its own: only its forking thread is alive.
    assert (True, False) == run_in_child(child)


def test_plain_lock_of_the_forking_thread_with_other_threads_alive() -> None:
    """The documented limit: a plain Lock records no owner, so while other
    threads are alive one the forking thread holds counts as theirs. The
    child gets it free, reported reset, and releasing it again fails."""
    lock = track(threading.Lock())

    def leave_the_block() -> tuple[bool, str]:
        try:
            lock.release()
        except RuntimeError as exc:
            return was_reset(lock), str(exc)
        return was_reset(lock), "released"

    with Holder(threading.Lock()), lock:
        seen = run_in_child(leave_the_block)
    assert (True, "release unlocked lock") == seen


def test_fork_inside_rlock_acquired_twice() -> None:
    """An RLock the forking thread acquired twice keeps its owner and count
    in the child: two releases succeed and a third raises."""
    rlock = track(threading.RLock())

    def leave_the_blocks() -> list[str]:
        seen = ["owned" if rlock._is_owned() else "not owned"]  # type: ignore[attr-defined]
        rlock.release()
        rlock.release()
        seen.append("owned" if rlock._is_owned() else "released")  # type: ignore[attr-defined]
        try:
            rlock.release()
        except RuntimeError:
            seen.append("third release refused")
        return seen

    # Another thread is alive: the RLock's owner is what counts.
    with Holder(threading.Lock()), rlock, rlock:
        seen = run_in_child(leave_the_blocks)
    assert ["owned", "released", "third release refused"] == seen


def test_fork_with_a_lock_free_holds_it_across_and_releases_it_in_both() -> None:
    """A free tracked lock is free again in both processes after the fork,
    and is not reported reset."""
    lock = track(threading.Lock())
    seen: list[bool] = []
    with atfork.atfork(prepare=lambda: None, parent=lambda: seen.append(lock.acquire(False))):
        # A parent hook of lower priority runs after the release.
        child = run_in_child(lambda: (lock.acquire(False), was_reset(lock)))
    assert [True] == seen
    assert (True, False) == child


def test_a_lock_held_by_another_thread_does_not_delay_the_fork() -> None:
    """The fork completes while another thread still holds the tracked lock
    (for up to 5 s), and the child gets it free."""
    lock = track(threading.Lock())
    with Holder(lock) as holder:
        assert run_in_child(lambda: lock.acquire(timeout=5))
        # Back in the parent: the holder has not let go yet.
        assert holder.holding
        assert not lock.acquire(False)
    assert lock.acquire(False)


def test_a_lock_tracked_twice_is_handled_once() -> None:
    """A Condition over a tracked Lock: both tracked, the fork takes the
    lock once and frees it in the child, reporting nothing reset."""
    lock = track(threading.Lock())
    condition = track(threading.Condition(lock))
    with Holder(threading.Lock()):
        seen = run_in_child(lambda: (lock.acquire(False), was_reset(lock), was_reset(condition)))
    assert (True, False, False) == seen


def test_a_failed_prepare_gives_the_locks_back(unraisable: list[Any]) -> None:
    """If prepare fails half way, the locks it had taken are released in
    both processes."""
    lock = track(threading.Lock())
    condition = track(threading.Condition())
    condition._lock = None  # type: ignore[attr-defined]  # prepare cannot find its lock
    try:
        assert run_in_child(lambda: lock.acquire(False))
    finally:
        untrack(condition)
    assert lock.acquire(False)
    assert [AttributeError] == [type(report.exc_value) for report in unraisable]


def test_untracked_objects_are_left_alone() -> None:
    """After untrack() the fork no longer touches the lock."""
    lock = track(threading.Lock())
    untrack(lock)
    untrack(lock)
    with Holder(lock):
        assert not run_in_child(lambda: lock.acquire(False))


def test_a_second_registration_of_the_hook_is_harmless() -> None:
    """Two registrations (a race of two first track() calls) handle each
    fork once: a free lock is not mistaken for another thread's."""
    lock = track(threading.Lock())
    atfork.atfork(
        atfork_threading._prepare,
        atfork_threading._parent,
        atfork_threading._child,
        priority=atfork.integrations.PRIORITY_THREADING,
    )
    with Holder(threading.Lock()):
        assert (True, False) == run_in_child(lambda: (lock.acquire(False), was_reset(lock)))
    assert lock.acquire(False)


# -- Notification -------------------------------------------------------------


class Cache:
    """An owner whose lock guards a two-step update."""

    def __init__(self) -> None:
        self.items = {"a": 1}
        self.resets = 0
        self.lock = track(threading.Lock(), on_reset=self.discard)

    def discard(self, lock: object) -> None:
        assert lock is self.lock
        self.resets += 1
        self.items = {}


def test_on_reset_reaches_the_owner_in_the_child() -> None:
    """A fork in the middle of another thread's update resets the lock and
    calls the owner's on_reset, which discards the half-updated state."""
    cache = Cache()
    cache.items["half"] = 0  # the updating thread got this far
    with Holder(cache.lock):
        seen = run_in_child(lambda: (cache.resets, cache.items, was_reset(cache.lock)))
    assert (1, {}, True) == seen
    assert 0 == cache.resets
    assert not was_reset(cache.lock)


def test_on_reset_is_not_called_when_the_lock_was_free() -> None:
    """No other thread inside: no reset, no call."""
    cache = Cache()
    with Holder(threading.Lock()):
        seen = run_in_child(lambda: (cache.resets, was_reset(cache.lock)))
    assert (0, False) == seen


def test_on_reset_runs_before_user_child_callbacks() -> None:
    """A user child hook already sees the owner's state discarded."""
    cache = Cache()
    seen: list[object] = []
    with atfork.atfork(child=lambda: seen.append(dict(cache.items))), Holder(cache.lock):
        child_saw = run_in_child(lambda: seen)
    assert [{}] == child_saw


def test_was_reset_is_not_inherited_by_a_grandchild() -> None:
    """A child's reset is its own: its own child, forked with the lock free,
    reports nothing."""
    cache = Cache()

    def child() -> tuple[bool, bool]:
        return was_reset(cache.lock), run_in_child(lambda: was_reset(cache.lock))

    with Holder(cache.lock):
        assert (True, False) == run_in_child(child)


def test_on_reset_holds_a_bound_method_weakly() -> None:
    """An owner whose bound method is the callback can still die."""
    cache = Cache()
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None


def test_an_on_reset_error_is_reported_and_the_rest_still_runs() -> None:
    """on_reset raising is reported through sys.unraisablehook, naming the
    object; other objects are still reset."""
    first = track(threading.Lock(), on_reset=lambda lock: 1 / 0)
    second = Cache()
    reports: list[Any] = []
    previous, sys.unraisablehook = sys.unraisablehook, reports.append
    try:
        with Holder(first, second.lock):
            resets = run_in_child(lambda: second.resets)
    finally:
        sys.unraisablehook = previous
    # run_in_child reports the child's callback errors again in the parent.
    (report,) = reports
    assert ChildCallbackError is report.exc_type
    # The hook is named in the message from 3.14 on, in the exception before.
    assert "on_reset of lock at 0x" in report.err_msg + str(report.exc_value)
    assert "ZeroDivisionError" in str(report.exc_value)
    assert 1 == resets


# -- Semaphores, conditions, queues, executors ---------------------------------


def test_semaphore_permits_of_the_forking_thread_stay_held() -> None:
    """In the child the other threads' permits are returned and the forking
    thread's stay held: its release() then brings the count back to full."""
    semaphore = track(threading.BoundedSemaphore(3))
    semaphore.acquire()  # the forking thread's permit

    def child() -> list[int]:
        values = [semaphore._value]
        semaphore.release()
        values.append(semaphore._value)
        return values

    with Holder(semaphore, semaphore):  # two permits in another thread
        values = run_in_child(child)
    semaphore.release()
    assert [2, 3] == values


def test_semaphore_hand_off_is_not_returned_twice() -> None:
    """A permit one thread acquired and another released is back already:
    the child returns nothing for it."""
    semaphore = track(threading.Semaphore(1))
    acquirer = threading.Thread(target=semaphore.acquire)
    acquirer.start()
    acquirer.join()
    releaser = threading.Thread(target=semaphore.release)
    releaser.start()
    releaser.join()
    with Holder(threading.Lock()):
        assert (1, False) == run_in_child(lambda: (semaphore._value, was_reset(semaphore)))


def test_semaphore_with_permits_returned_is_reported_reset() -> None:
    """Permits returned in the child count as a reset: a thread was inside."""
    semaphore = track(threading.Semaphore(2))
    with Holder(semaphore):
        assert run_in_child(lambda: was_reset(semaphore))


def test_condition_owned_by_the_forking_thread() -> None:
    """A Condition (over an RLock) the forking thread is inside stays held;
    the child can notify and leave it."""
    condition = track(threading.Condition())

    def child() -> bool:
        condition.notify_all()
        condition.release()
        return condition.acquire(False)

    with Holder(threading.Lock()), condition:
        assert run_in_child(child)


def test_queue_mutex_held_by_another_thread() -> None:
    """A Queue whose mutex another thread holds (as put() and get() do for
    a moment) works in the child and is reported reset."""
    jobs: queue.Queue[str] = track(queue.Queue())
    jobs.put("kept")

    def child() -> tuple[bool, list[str]]:
        jobs.put("new")
        return was_reset(jobs), [jobs.get(), jobs.get()]

    with Holder(jobs.mutex):
        assert (True, ["kept", "new"]) == run_in_child(child)


def test_executor_is_held_weakly() -> None:
    """A tracked ThreadPoolExecutor can die.

    In a fresh interpreter: importing concurrent.futures' thread pool
    registers a before-fork hook that takes a plain lock, which a fork made
    inside a prepare callback (as a core test does) would wait on for ever.
    """
    run = run_python(
        textwrap.dedent(
            """
            import gc, weakref
            from concurrent.futures import ThreadPoolExecutor
            from atfork.integrations.threading import track
            executor = ThreadPoolExecutor(2)
            assert executor is track(executor)
            executor.submit(int).result()
            executor.shutdown()
            ref = weakref.ref(executor)
            del executor
            gc.collect()
            print(ref() is None)
            """
        )
    )
    assert ("True\n", 0) == (run.stdout, run.returncode), run.stderr


# -- enable(): imports, multiprocessing, asyncio --------------------------------


def test_import_owned_by_the_forking_thread_goes_on(tmp_path: Any) -> None:
    """A module the forking thread is importing (its code forks) is left to
    finish, in both processes."""
    (tmp_path / "forks_on_import.py").write_text(
        "from atfork.testing import run_in_child\n"
        "import sys\n"
        "CHILD = run_in_child(lambda: 'forks_on_import' in sys.modules)\n"
    )
    atfork_threading.enable()
    sys.path.insert(0, str(tmp_path))
    try:
        import forks_on_import  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("forks_on_import", None)
    assert forks_on_import.CHILD


def test_asyncio_loop_can_run_in_the_child() -> None:
    """An inherited loop runs in the child on its own selector: a thread-safe
    call from a child thread wakes it; the parent's loop still works."""
    atfork_threading.enable()
    loop = asyncio.new_event_loop()
    try:

        def child() -> str:
            waker = threading.Timer(0.1, loop.call_soon_threadsafe, args=(loop.stop,))
            waker.start()
            loop.run_forever()  # returns once woken, or waits for ever
            waker.join()
            loop.close()
            return "woken"

        assert "woken" == run_in_child(child)
        assert 7 == loop.run_until_complete(asyncio.sleep(0, 7))
    finally:
        loop.close()


def test_asyncio_loops_made_before_enable_are_found() -> None:
    """enable() finds the loops that already exist."""
    loop = asyncio.new_event_loop()
    try:
        atfork_threading.enable()
        parent_selector = loop._selector  # type: ignore[attr-defined]
        assert run_in_child(lambda: loop._selector is not parent_selector)  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_disable_stops_watching_asyncio_loops() -> None:
    """After disable() the loop class is as asyncio made it."""
    init = asyncio.selector_events.BaseSelectorEventLoop.__init__
    atfork_threading.enable()
    assert init is not asyncio.selector_events.BaseSelectorEventLoop.__init__
    atfork_threading.disable()
    assert init is asyncio.selector_events.BaseSelectorEventLoop.__init__


def test_disable_stops_watching_executors() -> None:
    """After disable() ThreadPoolExecutor is as concurrent.futures made it.

    In a fresh interpreter, for the reason test_executor_is_held_weakly gives.
    """
    run = run_python(
        textwrap.dedent(
            """
            from concurrent.futures import ThreadPoolExecutor
            from atfork.integrations import threading as atfork_threading
            init = ThreadPoolExecutor.__init__
            atfork_threading.enable()
            watched = ThreadPoolExecutor.__init__ is not init
            atfork_threading.disable()
            print(watched, ThreadPoolExecutor.__init__ is init)
            """
        )
    )
    assert ("True True\n", 0) == (run.stdout, run.returncode), run.stderr


def test_executor_lock_of_the_forking_thread_is_kept() -> None:
    """A fork made from a done-callback that shutdown() runs under the
    executor's lock leaves that lock to the forking thread in the child."""
    run = run_python(
        textwrap.dedent(
            """
            import os, threading
            from concurrent.futures import ThreadPoolExecutor
            from atfork.integrations import threading as atfork_threading
            from atfork.testing import wait_child
            atfork_threading.enable()
            executor = ThreadPoolExecutor(max_workers=1)
            started, release = threading.Event(), threading.Event()
            executor.submit(lambda: (started.set(), release.wait(60)))
            started.wait()
            queued = executor.submit(int)
            pids = []
            queued.add_done_callback(lambda future: pids.append(os.fork()))
            try:
                executor.shutdown(wait=False, cancel_futures=True)
                outcome = "shut down"
            except RuntimeError as exc:  # the lock was reset under shutdown()
                outcome = str(exc)
            if pids[0] == 0:
                print("child:", outcome, flush=True)
                os._exit(0)
            status = wait_child(pids[0])
            release.set()
            executor.shutdown()
            print("parent:", outcome, status)
            """
        )
    )
    assert ("child: shut down\nparent: shut down 0\n", 0) == (
        run.stdout,
        run.returncode,
    ), run.stderr


def test_unused_multiprocessing_queue_is_left_alone() -> None:
    """A queue whose feeder never started needs nothing and gets nothing."""
    atfork_threading.enable()
    items: Any = multiprocessing.Queue()
    try:
        buffer = items._buffer
        assert run_in_child(lambda: items._buffer is buffer)
    finally:
        items.close()


# -- Diagnostics ----------------------------------------------------------------


# CPython's own warning (3.12+) for the same fork.
@pytest.mark.filterwarnings("ignore:This process.*is multi-threaded:DeprecationWarning")
def test_warns_about_threads_and_held_locks() -> None:
    """With warn=True a fork with other threads alive warns in the parent,
    naming the threads and the tracked objects they held."""
    atfork_threading.enable(warn=True)
    lock = track(threading.Lock())
    with Holder(lock), pytest.warns(ForkWithThreadsWarning) as record:
        run_in_child(int)
    (warning,) = [w for w in record if w.category is ForkWithThreadsWarning]
    message = str(warning.message)
    # (Other test modules may leave threads of their own alive.)
    assert re.match(r"fork with \d+ other thread\(s\) alive: .*'holder'", message), message
    assert (
        "; tracked objects held by another thread, reset in the child: "
        f"<locked _thread.lock object at {id(lock):#x}>"
    ) in message
    # It points at the os.fork() call.
    assert atfork.testing.__file__ == warning.filename


def test_does_not_warn_without_other_threads() -> None:
    """A fork with no other thread alive gives no warning."""
    atfork_threading.enable(warn=True)

    def fork_alone() -> list[str]:  # in a child: its only thread forks
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            run_in_child(int)
        return [str(warning.message) for warning in seen]

    assert [] == run_in_child(fork_alone)


def test_the_warning_class_is_public() -> None:
    """The warning is an AtforkWarning shown under its public module."""
    assert issubclass(ForkWithThreadsWarning, atfork.AtforkWarning)
    assert "atfork.integrations.threading" == ForkWithThreadsWarning.__module__


def test_no_warning_by_default() -> None:
    """enable() without warn=True is silent."""
    atfork_threading.enable()
    with Holder(threading.Lock()), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run_in_child(int)
    assert [] == [w for w in seen if issubclass(w.category, ForkWithThreadsWarning)]
