"""Each fork failure atfork.integrations.threading fixes, reproduced in a
fresh interpreter without atfork, then run again with it.

Every scenario runs twice, in its own interpreter: once as a plain program
(the failure must show: a child hung at the deadline, an item lost, a
wake-up missed) and once with the integration. The runs go concurrently in
one module-scoped fixture (an expected hang sleeps until its deadline, so
running them one after the other would only wait).
"""

from __future__ import annotations

import textwrap
import threading
from typing import NamedTuple

import pytest

from atfork.testing import PythonRun, run_python

# Seconds a child may take: short where it is expected to hang, generous
# where it is expected to finish.
HANG_DEADLINE = 5
DEADLINE = 30

HEADER = """
import contextlib, os, sys, threading, time
from atfork.testing import ChildTimeoutError, run_in_child

WITH_ATFORK = {with_atfork}
DEADLINE = {deadline}
if WITH_ATFORK:
    from atfork.integrations import threading as atfork_threading
    if {enable}:
        atfork_threading.enable()
    track = atfork_threading.track
else:
    def track(obj):
        return obj

def in_child(func):
    try:
        print("child:", run_in_child(func, timeout=DEADLINE))
    except ChildTimeoutError as exc:
        print("child: HUNG")
        print(exc.stack, file=sys.stderr)

done = threading.Event()

def hold(*managers):
    # Enter the managers in a new thread, which holds them until done is set.
    held = threading.Event()
    def run():
        with contextlib.ExitStack() as stack:
            for manager in managers:
                stack.enter_context(manager)
            held.set()
            done.wait(60)
    threading.Thread(target=run, daemon=True).start()
    held.wait()
"""


class Scenario(NamedTuple):
    #: The program, after HEADER; it defines ``child`` and calls in_child().
    source: str
    #: Lines its output has without atfork, and with it.
    without: tuple[str, ...]
    with_atfork: tuple[str, ...]
    #: True for the integration's enable() part, False for track().
    enable: bool = False


HUNG = "child: HUNG"

# The end of a scenario whose ``executor`` the parent used: each process
# submits its own work.
SUBMIT_IN_BOTH = """
        def child():
            return executor.submit(os.getpid).result() == os.getpid()
        in_child(child)
        print("parent:", executor.submit(abs, -3).result())
        executor.shutdown()
"""

# The end of a scenario whose ``executor`` has ``queued = submit(mark)``
# waiting at the fork, until ``release`` is set: where did mark() run?
QUEUED_IN_THE_PARENT = """
        def child():
            return executor.submit(os.getpid).result() == os.getpid(), queued.done()
        in_child(child)
        release.set()
        queued.result()
        executor.shutdown()
        os.close(write)
        pids = os.read(read, 1000).split()
        print("mark ran in:", sorted("parent" if int(p) == PARENT else "child" for p in pids))
"""

SCENARIOS = {
    "lock held by another thread": Scenario(
        """
        lock = track(threading.Lock())
        hold(lock)
        def child():
            with lock:
                return "acquired"
        in_child(child)
        done.set()
        """,
        without=(HUNG,),
        with_atfork=("child: acquired",),
    ),
    "rlock held by another thread": Scenario(
        """
        rlock = track(threading.RLock())
        hold(rlock)
        def child():
            with rlock:
                return "acquired"
        in_child(child)
        done.set()
        """,
        without=(HUNG,),
        with_atfork=("child: acquired",),
    ),
    "condition held by another thread": Scenario(
        """
        condition = track(threading.Condition())
        hold(condition)
        def child():
            with condition:
                condition.notify_all()
                return "notified"
        in_child(child)
        done.set()
        """,
        without=(HUNG,),
        with_atfork=("child: notified",),
    ),
    "condition waited on by another thread": Scenario(
        # notify() wakes the first waiter: the parent's thread, absent here.
        """
        condition = track(threading.Condition())
        waiting = threading.Event()
        def wait_in_parent():
            with condition:
                waiting.set()
                condition.wait(60)
        threading.Thread(target=wait_in_parent, daemon=True).start()
        waiting.wait()
        with condition:  # wait() released it: that waiter is registered
            pass
        def child():
            child_waiting = threading.Event()
            def wait_in_child():
                with condition:
                    child_waiting.set()
                    condition.wait()
            waiter = threading.Thread(target=wait_in_child)
            waiter.start()
            child_waiting.wait()
            with condition:
                condition.notify()
            waiter.join()
            return "woken"
        in_child(child)
        with condition:
            condition.notify_all()
        """,
        without=(HUNG,),
        with_atfork=("child: woken",),
    ),
    "semaphore permits held by another thread": Scenario(
        """
        semaphore = track(threading.BoundedSemaphore(2))
        hold(semaphore, semaphore)
        def child():
            with semaphore, semaphore:
                return "acquired twice"
        in_child(child)
        done.set()
        """,
        without=(HUNG,),
        with_atfork=("child: acquired twice",),
    ),
    "event lock held by another thread": Scenario(
        # set(), clear() and wait() hold the event's lock for a moment: the
        # holding thread freezes that moment.
        """
        event = track(threading.Event())
        hold(event._cond)
        def child():
            event.set()
            return event.is_set()
        in_child(child)
        done.set()
        """,
        without=(HUNG,),
        with_atfork=("child: True",),
    ),
    "queue waited on by another thread": Scenario(
        # put() notifies the first waiting consumer: the parent's thread.
        """
        import queue
        jobs = track(queue.Queue())
        threading.Thread(target=jobs.get, daemon=True).start()
        while not jobs.not_empty._waiters:  # until the consumer waits in get()
            time.sleep(0.01)
        def child():
            got = []
            waiters = len(jobs.not_empty._waiters)
            consumer = threading.Thread(target=lambda: got.append(jobs.get()))
            consumer.start()
            while len(jobs.not_empty._waiters) == waiters:
                time.sleep(0.01)
            jobs.put("job")
            consumer.join()
            return got
        in_child(child)
        jobs.put(None)
        """,
        without=(HUNG,),
        with_atfork=("child: ['job']",),
    ),
    "executor used before the fork": Scenario(
        # The child's submit() counts on the parent's worker.
        """
        from concurrent.futures import ThreadPoolExecutor
        executor = track(ThreadPoolExecutor(max_workers=1))
        executor.submit(int).result()
        """
        + SUBMIT_IN_BOTH,
        without=(HUNG, "parent: 3"),
        with_atfork=("child: True", "parent: 3"),
    ),
    "executor with work queued at the fork": Scenario(
        # The queued mark() must run once, in the parent. With a single
        # worker, had the child kept it, it would run there before the
        # child's own work.
        """
        from concurrent.futures import ThreadPoolExecutor
        executor = track(ThreadPoolExecutor(max_workers=1))
        PARENT = os.getpid()
        read, write = os.pipe()
        started, release = threading.Event(), threading.Event()
        def block():
            started.set()
            release.wait(60)
        def mark():
            os.write(write, b"%d " % os.getpid())
        executor.submit(block)
        started.wait()
        queued = executor.submit(mark)
        """
        + QUEUED_IN_THE_PARENT,
        without=(HUNG, "mark ran in: ['parent']"),
        with_atfork=("child: (True, False)", "mark ran in: ['parent']"),
    ),
    "executor made and used before enable(), never tracked": Scenario(
        # enable() finds the executors that exist already.
        """
        from concurrent.futures import ThreadPoolExecutor
        executor = ThreadPoolExecutor(max_workers=1)
        executor.submit(int).result()
        if WITH_ATFORK:
            atfork_threading.enable()
        """
        + SUBMIT_IN_BOTH,
        without=(HUNG, "parent: 3"),
        with_atfork=("child: True", "parent: 3"),
    ),
    "executor made after enable(), work queued at the fork, never tracked": Scenario(
        # The parent's worker is still in its initializer, so mark() waits
        # in the queue, and a second worker may start: without atfork the
        # child starts it, and it runs the parent's mark() again.
        """
        from concurrent.futures import ThreadPoolExecutor
        PARENT = os.getpid()
        initializing, release = threading.Event(), threading.Event()
        def initializer():
            if os.getpid() == PARENT:
                initializing.set()
                release.wait(60)
        executor = ThreadPoolExecutor(max_workers=2, initializer=initializer)
        read, write = os.pipe()
        def mark():
            os.write(write, b"%d " % os.getpid())
        queued = executor.submit(mark)
        initializing.wait()
        """
        + QUEUED_IN_THE_PARENT,
        without=("child: (True, True)", "mark ran in: ['child', 'parent']"),
        with_atfork=("child: (True, False)", "mark ran in: ['parent']"),
        enable=True,
    ),
    "executor lock held by another thread, never tracked": Scenario(
        # As by a thread in the middle of submit() or shutdown().
        """
        from concurrent.futures import ThreadPoolExecutor
        executor = ThreadPoolExecutor(max_workers=1)
        executor.submit(int).result()
        hold(executor._shutdown_lock)
        def child():
            return executor.submit(os.getpid).result() == os.getpid()
        in_child(child)
        done.set()
        executor.shutdown()
        """,
        without=(HUNG,),
        with_atfork=("child: True",),
        enable=True,
    ),
    "executor forked by its own worker, never tracked": Scenario(
        # The child's forking thread goes on as the executor's worker: it
        # must not take the parent's queued mark() from the queue.
        """
        from concurrent.futures import ThreadPoolExecutor
        from atfork.testing import wait_child
        PARENT = os.getpid()
        executor = ThreadPoolExecutor(max_workers=1)
        read, write = os.pipe()
        started, go = threading.Event(), threading.Event()
        def mark():
            os.write(write, b"%d " % os.getpid())
        def end():
            os.write(write, b"end ")
            os._exit(0)
        def fork_here():
            started.set()
            go.wait(60)
            pid = os.fork()
            if pid == 0:
                executor.submit(end)
            return pid
        forked = executor.submit(fork_here)
        started.wait()
        queued = executor.submit(mark)
        go.set()
        print("child status:", wait_child(forked.result(), timeout=DEADLINE))
        queued.result()
        executor.shutdown()
        os.close(write)
        tokens = b"".join(iter(lambda: os.read(read, 1000), b"")).split()
        def kind(token):
            return "end" if token == b"end" else "parent" if int(token) == PARENT else "child"
        print("ran:", sorted(map(kind, tokens)))
        """,
        without=("child status: 0", "ran: ['child', 'end', 'parent']"),
        with_atfork=("child status: 0", "ran: ['end', 'parent']"),
        enable=True,
    ),
    "multiprocessing queue used before os.fork": Scenario(
        """
        import multiprocessing, queue
        items = multiprocessing.Queue()
        items.put("from the parent")
        items.get(timeout=30)  # its feeder thread has run
        def child():
            items.put("from the child")
            items.close()
            items.join_thread()  # flushed before the child exits
            return "put"
        in_child(child)
        try:
            print("parent got:", items.get(timeout=DEADLINE))
        except queue.Empty:
            print("parent got: nothing")
        """,
        without=("child: put", "parent got: nothing"),
        with_atfork=("child: put", "parent got: from the child"),
        enable=True,
    ),
    "module being imported by another thread": Scenario(
        """
        import pathlib, shutil, tempfile
        folder = tempfile.mkdtemp()
        pathlib.Path(folder, "slow_module.py").write_text(
            "import __main__, os\\n"
            "if os.getpid() == __main__.PARENT:\\n"
            "    __main__.importing.set()\\n"
            "    __main__.finish.wait(60)\\n"
            "WHERE = 'parent' if os.getpid() == __main__.PARENT else 'child'\\n"
        )
        sys.path.insert(0, folder)
        PARENT = os.getpid()
        importing, finish = threading.Event(), threading.Event()
        importer = threading.Thread(target=__import__, args=("slow_module",))
        importer.start()
        importing.wait()
        def child():
            import slow_module
            return "imported in the " + slow_module.WHERE
        in_child(child)
        finish.set()
        importer.join()
        shutil.rmtree(folder)
        """,
        without=(HUNG,),
        with_atfork=("child: imported in the child",),
        enable=True,
    ),
    "asyncio loop closed by the child": Scenario(
        # The parent's loop sleeps until a 3 s timer; a thread-safe call
        # made at 0.2 s must wake it and stop it before the timer fires.
        """
        import asyncio
        loop = asyncio.new_event_loop()
        def child():
            loop.close()
            return "closed"
        in_child(child)
        events = []
        def record(name):
            events.append(name)
            loop.stop()
        loop.call_later(3, record, "timer")
        threading.Timer(0.2, loop.call_soon_threadsafe, args=(record, "wake-up")).start()
        loop.run_forever()
        loop.close()
        print("parent loop ran:", events)
        """,
        without=("child: closed", "parent loop ran: ['wake-up', 'timer']"),
        with_atfork=("child: closed", "parent loop ran: ['wake-up']"),
        enable=True,
    ),
}


def _run(name: str, with_atfork: bool) -> PythonRun:
    scenario = SCENARIOS[name]
    source = HEADER.format(
        with_atfork=with_atfork,
        enable=scenario.enable,
        deadline=DEADLINE if with_atfork else HANG_DEADLINE,
    ) + textwrap.dedent(scenario.source)
    return run_python(source, timeout=120)


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, bool], PythonRun]:
    """Every scenario, without and with atfork, each in a fresh interpreter."""
    # Plain threads, not a ThreadPoolExecutor: importing concurrent.futures'
    # thread pool in this process registers a before-fork hook taking a
    # plain lock, which a fork made inside a prepare callback (as a core
    # test does) would wait on for ever.
    results: dict[tuple[str, bool], PythonRun] = {}

    def run(name: str, with_atfork: bool) -> None:
        results[name, with_atfork] = _run(name, with_atfork)

    threads = [
        threading.Thread(target=run, args=(name, with_atfork))
        for name in SCENARIOS
        for with_atfork in (False, True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _lines(run: PythonRun) -> list[str]:
    assert not run.timed_out, run.stack
    assert 0 == run.returncode, run.stderr
    return run.stdout.splitlines()


@pytest.mark.parametrize("name", SCENARIOS)
def test_fails_without_atfork(runs: dict[tuple[str, bool], PythonRun], name: str) -> None:
    """Without atfork the scenario shows its failure."""
    run = runs[name, False]
    lines = _lines(run)
    for expected in SCENARIOS[name].without:
        assert expected in lines, run.stdout
    if HUNG in lines:  # hung inside the child's own code, as its stack shows
        assert "in child" in run.stderr, run.stderr


@pytest.mark.parametrize("name", SCENARIOS)
def test_works_with_atfork(runs: dict[tuple[str, bool], PythonRun], name: str) -> None:
    """With atfork.integrations.threading the same program works."""
    run = runs[name, True]
    lines = _lines(run)
    for expected in SCENARIOS[name].with_atfork:
        assert expected in lines, (run.stdout, run.stderr)
