"""Objects that belong to one process (atfork._per_process)."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

import atfork
from atfork.testing import run_in_child, wait_child


class Worker:
    """Stands for a library's background worker: a backlog and its process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.backlog = ["queued in " + str(self.pid)]


def made() -> tuple[list[Worker], atfork.ProcessLocal[Worker]]:
    """A per-process Worker and the list of the workers its factory made."""
    workers: list[Worker] = []

    def factory() -> Worker:
        worker = Worker()
        workers.append(worker)
        return worker

    return workers, atfork.per_process(factory)


def test_get_makes_one_object_per_process() -> None:
    """get() calls the factory once, then returns the same object; calling
    the ProcessLocal is get()."""
    workers, local = made()
    assert [] == workers
    first = local.get()
    assert first is local.get()
    assert first is local()
    assert [first] == workers


def test_child_gets_a_fresh_object_and_the_parent_keeps_its_own() -> None:
    """A forked child's first get() makes the child's own object; the
    parent's object is the same and unchanged after the child used its own."""
    workers, local = made()
    parent_worker = local.get()

    def in_child() -> tuple[int, bool, int]:
        worker = local.get()
        worker.backlog.append("child")
        return worker.pid, worker is parent_worker, len(workers)

    pid, same, count = run_in_child(in_child)
    assert (False, 2) == (same, count)
    assert pid != os.getpid()
    assert local.get() is parent_worker
    assert ["queued in " + str(os.getpid())] == parent_worker.backlog
    assert [parent_worker] == workers


def test_factory_is_not_called_at_fork() -> None:
    """Nothing is made at fork time: a child that never calls get() never
    calls the factory, and peek() there gives None, not the parent's object."""
    workers, local = made()
    local.get()

    def in_child() -> tuple[int, object]:
        return len(workers), local.peek()

    assert (1, None) == run_in_child(in_child)


def test_on_inherit_gets_the_parents_object_once() -> None:
    """on_inherit is called once in the child, on its first get() and before
    the factory, with the object the parent had."""
    calls: list[Any] = []

    def factory() -> Worker:
        calls.append("factory")
        return Worker()

    def on_inherit(worker: Worker) -> None:
        calls.append(("inherited", worker.pid, list(worker.backlog)))
        worker.backlog.clear()  # the child drops the copy of the backlog

    local = atfork.per_process(factory, on_inherit=on_inherit)
    parent = local.get()

    def in_child() -> list[Any]:
        del calls[:]
        local.get()
        local.get()
        local.reset()
        local.get()
        return calls

    me = os.getpid()
    assert [("inherited", me, [f"queued in {me}"]), "factory", "factory"] == run_in_child(in_child)
    assert [f"queued in {me}"] == parent.backlog


def test_on_inherit_is_not_called_when_the_parent_had_none() -> None:
    """A parent that never made its object hands nothing to the child."""
    calls: list[object] = []
    local = atfork.per_process(Worker, on_inherit=calls.append)

    def in_child() -> tuple[list[object], bool]:
        return calls, isinstance(local.get(), Worker)

    assert ([], True) == run_in_child(in_child)


def test_on_inherit_that_raises_is_not_called_again() -> None:
    """An error of on_inherit reaches the caller of get(); the next get()
    goes on with the factory."""
    calls: list[object] = []

    def on_inherit(worker: Worker) -> None:
        calls.append(worker)
        raise ValueError("cannot drop it")

    local = atfork.per_process(Worker, on_inherit=on_inherit)
    local.get()

    def in_child() -> tuple[str, int, bool]:
        try:
            local.get()
        except ValueError as error:
            message = str(error)
        return message, len(calls), local.get().pid == os.getpid()

    assert ("cannot drop it", 1, True) == run_in_child(in_child)


def test_factory_that_raises_is_tried_again() -> None:
    """An error of the factory reaches the caller, and nothing is kept: the
    next get() calls the factory again."""
    attempts: list[int] = []

    def factory() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("no connection yet")
        return len(attempts)

    local = atfork.per_process(factory)
    with pytest.raises(OSError, match="no connection yet"):
        local.get()
    assert local.peek() is None
    assert 2 == local.get()


def test_peek_never_makes_an_object() -> None:
    """peek() gives None until get() made the object, then that object."""
    workers, local = made()
    assert local.peek() is None
    assert [] == workers
    worker = local.get()
    assert worker is local.peek()


def test_reset_drops_this_processs_object() -> None:
    """reset() returns the object it dropped; the next get() makes another;
    reset() with no object returns None."""
    workers, local = made()
    assert local.reset() is None
    first = local.get()
    assert first is local.reset()
    assert local.peek() is None
    second = local.get()
    assert second is not first
    assert [first, second] == workers


def test_reset_in_child_leaves_the_parent_alone() -> None:
    """reset() in a child that has not made its object does nothing there,
    and nothing to the parent."""
    _, local = made()
    parent = local.get()

    def in_child() -> tuple[object, bool]:
        dropped = local.reset()
        return dropped, local.get() is not parent

    assert (None, True) == run_in_child(in_child)
    assert parent is local.peek()


def test_threads_racing_get_make_one_object() -> None:
    """Threads calling get() at once, in the parent and in a child, get one
    object, made once."""
    threads_count = 8
    barrier_timeout = 30.0

    def race() -> tuple[int, int]:
        entered = threading.Barrier(threads_count, timeout=barrier_timeout)
        calls: list[int] = []

        def factory() -> object:
            calls.append(1)
            return object()

        local = atfork.per_process(factory)
        got: list[object] = []

        def run() -> None:
            entered.wait()
            got.append(local.get())

        threads = [threading.Thread(target=run) for _ in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(barrier_timeout)
        return len(calls), len({id(g) for g in got})

    assert (1, 1) == race()
    assert (1, 1) == run_in_child(race)


def test_a_creation_in_another_thread_at_the_fork_does_not_block_the_child() -> None:
    """A child forked while another thread is inside the factory (holding
    the creation lock) makes its own object at once."""
    entered, release = threading.Event(), threading.Event()
    blocking = [True]

    def factory() -> int:
        if blocking[0]:
            entered.set()
            release.wait(60)
        return os.getpid()

    local = atfork.per_process(factory)
    maker = threading.Thread(target=local.get)
    maker.start()
    try:
        assert entered.wait(30)

        def in_child() -> bool:
            blocking[0] = False
            return local.get() == os.getpid()

        assert run_in_child(in_child, timeout=10)
    finally:
        release.set()
        maker.join(30)
    assert os.getpid() == local.get()


def test_grandchild_gets_its_own_and_inherits_the_childs() -> None:
    """A child of a child makes its own object, and its on_inherit gets the
    child's object, not the grandparent's."""
    seen: list[int] = []
    local = atfork.per_process(Worker, on_inherit=lambda w: seen.append(w.pid))
    local.get()

    def grandchild() -> tuple[list[int], int]:
        return seen, local.get().pid

    def child() -> tuple[int, list[int], int, list[int], int]:
        mine = local.get().pid
        inherited, theirs = run_in_child(grandchild)
        return mine, inherited, theirs, seen, local.get().pid

    mine, inherited, theirs, child_seen, again = run_in_child(child)
    assert [os.getpid()] == child_seen
    assert [os.getpid(), mine] == inherited
    assert len({os.getpid(), mine, theirs}) == 3
    assert mine == again


def test_plain_fork_and_wait_child() -> None:
    """With os.fork() itself the child's object is its own too."""
    local = atfork.per_process(Worker)
    parent = local.get()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (coverage is shut down by os._exit)
        worker = local.get()
        os._exit(0 if worker is not parent and worker.pid == os.getpid() else 1)
    assert 0 == wait_child(pid)
    assert parent is local.get()


def test_get_from_the_factory_itself_raises() -> None:
    """A factory that asks for its own object gets RuntimeError, not a hang."""
    local: atfork.ProcessLocal[object]

    def factory() -> object:
        return local.get()

    local = atfork.per_process(factory)
    with pytest.raises(RuntimeError, match="would wait for itself"):
        local.get()


def test_fork_inside_the_factory() -> None:
    """A fork made by the factory (it starts a helper process) leaves the
    child free to make its own object."""
    results: list[int] = []
    local: atfork.ProcessLocal[int]

    def factory() -> int:
        if not results:
            results.append(0)  # the child's own factory call forks no more
            results.append(run_in_child(local.get))
        return os.getpid()

    local = atfork.per_process(factory)
    assert os.getpid() == local.get()
    assert results[1] not in (0, os.getpid())


def test_one_hook_serves_every_instance() -> None:
    """Every ProcessLocal shares one child hook, registered through atfork."""
    atfork.per_process(object)
    before = [h for h in atfork.hooks() if h.name == "atfork.per_process"]
    for _ in range(3):
        atfork.per_process(object)
    assert before == [h for h in atfork.hooks() if h.name == "atfork.per_process"]
    assert 1 == len(before)


def test_an_unregistered_hook_comes_back_with_the_next_creation() -> None:
    """If the shared hook is unregistered, the next object made registers it
    again, so the next child still gets an object of its own."""
    local = atfork.per_process(Worker)
    for hook in atfork.hooks():
        if hook.name == "atfork.per_process":
            hook.unregister()
    parent = local.get()
    assert 1 == sum(h.name == "atfork.per_process" for h in atfork.hooks())
    assert run_in_child(lambda: local.get() is not parent)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factory": 3}, "factory must be callable, not int"),
        ({"factory": lambda x: x}, "factory is called with no arguments"),
        ({"factory": object, "on_inherit": "x"}, "on_inherit must be callable, not str"),
        ({"factory": object, "on_inherit": lambda: None}, "on_inherit is called with one argument"),
        ({"factory": object, "on_inherit": lambda a, b: None}, "on_inherit is called with one"),
    ],
)
def test_bad_input_raises_type_error(kwargs: dict[str, Any], message: str) -> None:
    """A factory or on_inherit that cannot be called as they will be is a
    TypeError at the call of per_process()."""
    with pytest.raises(TypeError, match=message):
        atfork.per_process(**kwargs)


def test_async_factory_is_refused() -> None:
    """An async factory would only make a coroutine: TypeError."""

    async def factory() -> None:
        pass

    with pytest.raises(TypeError, match="async function"):
        atfork.per_process(factory)


def test_process_local_is_made_by_per_process_only() -> None:
    """ProcessLocal() itself raises TypeError, naming per_process()."""
    with pytest.raises(TypeError, match=r"atfork\.per_process\(\)"):
        atfork.ProcessLocal()
