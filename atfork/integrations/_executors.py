"""concurrent.futures thread pool executors in a forked child.

A :class:`~concurrent.futures.ThreadPoolExecutor` used before the fork
counts the parent's idle workers in its idle semaphore (3.8+): the child's
``submit()`` believes a worker is idle, starts none, and the work never
runs; if it starts one, the new worker first runs the work queued in the
parent, a second time. A thread of the parent in ``submit()`` or
``shutdown()`` leaves the executor's lock held. Used by
:mod:`atfork.integrations.threading`, for tracked executors and for those
``enable()`` finds.
"""

from __future__ import annotations

import sys
import threading
import types
import weakref
from typing import Any, Callable

from atfork.integrations._toolkit import renew_locks

__all__ = ["found", "in_a_method_of", "repair", "repair_executor"]


def repair_executor(executor: Any, me: int) -> bool:
    # The parent's workers do not exist here. The work they had queued runs
    # in the parent, once: the child starts over with an empty queue, no
    # threads, and no idle-worker permits (which would stop submit() from
    # starting a worker).
    current = threading.current_thread()
    if current in executor._threads:
        # Forked by one of its own workers, which reads on from this queue
        # once its work item returns: the queue is emptied, the worker kept.
        queue, empty = executor._work_queue, sys.modules["queue"].Empty
        while True:
            try:
                queue.get_nowait()
            except empty:
                break
        executor._threads = {current}
    else:
        executor._work_queue = type(executor._work_queue)()
        executor._threads = set()
    semaphore = executor._idle_semaphore
    if type(semaphore) is threading.Semaphore:
        # Emptied in place: making a new one runs threading's Condition
        # code in the child, a page fault for each page it writes.
        attributes = vars(semaphore)
        renew_locks((attributes["_cond"],))  # its lock, and its waiters (the parent's)
        attributes["_value"] = 0
    else:
        executor._idle_semaphore = threading.Semaphore(0)
    return False


#: Thread pool executors made since threading.enable(), or found by it.
found: weakref.WeakSet[Any] = weakref.WeakSet()


def repair(me: int, tracked: Callable[[Any], object]) -> None:
    """Give each used executor :data:`found` what a tracked one gets,
    without the prepare phase: the fork is not made to wait. Those
    ``tracked`` returns a true value for are repaired already, with what
    their prepare found."""
    if not found:
        return
    for executor in list(found):
        if tracked(executor):
            continue
        lock = executor._shutdown_lock
        if lock.acquire(False):
            lock.release()
            if not executor._threads:
                continue  # never used: nothing of the parent's to forget
        elif not in_a_method_of(executor):
            # Held by another thread (in submit() or shutdown()), absent here.
            lock._at_fork_reinit()
        repair_executor(executor, me)


def in_a_method_of(obj: object) -> bool:
    """Whether the forking thread is inside a method of ``obj`` (and so may
    hold its lock: a future's done-callback run by ``shutdown()`` can fork)."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if "self" in frame.f_code.co_varnames and frame.f_locals.get("self") is obj:
            return True
        frame = frame.f_back
    return False
