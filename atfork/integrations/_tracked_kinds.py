"""What ``atfork.integrations.threading.track()`` accepts, and how each type
is handled at a fork: where its lock is, whether the lock is reentrant, and
what else the child repairs (waiters of conditions, semaphore permits held
by the parent's other threads, an executor's work queue and threads).

Used by :mod:`atfork.integrations.threading`: its prepare phase reads a
:class:`Kind` per tracked object, its child phase calls ``Kind.repair``.
"""

from __future__ import annotations

import sys
import threading
from _thread import get_ident
from operator import attrgetter
from typing import Any, Callable

from atfork.integrations._executors import repair_executor
from atfork.integrations._toolkit import LOCK, RLOCKS, Subclasses

__all__ = [
    "LOCK",
    "RLOCKS",
    "Kind",
    "count_permits",
    "kind_of",
    "repair_semaphore",
    "stop_counting",
]


def _clear_waiters(condition: Any) -> None:
    # The waiters are threads of the parent: none exists in the child, and a
    # notify() spent on one would wake nobody.
    condition._waiters.clear()


def _repair_condition(condition: Any, me: int) -> bool:
    _clear_waiters(condition)
    return False


def _repair_event(event: Any, me: int) -> bool:
    _clear_waiters(event._cond)
    return False


def _repair_queue(queue: Any, me: int) -> bool:
    for condition in (queue.not_empty, queue.not_full, queue.all_tasks_done):
        _clear_waiters(condition)
    return False


# A tracked semaphore counts, per thread, the permits it holds: acquisitions
# minus releases. Its class is swapped for a subclass (same name, same
# layout) whose ``_value`` is a property over one instance attribute holding
# ``(value, {thread ident: permits held})``. The stdlib changes ``_value``
# only while holding the semaphore's condition, and each change is one store
# here, so a fork never sees the value and its owners disagree.
_SEMAPHORE_STATE = "_atfork_state"
_counting = Subclasses()


def _get_value(semaphore: Any) -> int:
    value: int = semaphore.__dict__[_SEMAPHORE_STATE][0]
    return value


def _set_value(semaphore: Any, value: int) -> None:
    state = semaphore.__dict__
    old, held = state[_SEMAPHORE_STATE]
    ident = get_ident()
    held = held.copy()
    count = held.get(ident, 0) + old - value
    if count:
        held[ident] = count
    else:
        held.pop(ident, None)
    state[_SEMAPHORE_STATE] = (value, held)


_VALUE = property(_get_value, _set_value)


def count_permits(semaphore: Any) -> None:
    state = semaphore.__dict__
    if _SEMAPHORE_STATE not in state:
        # Permits taken before this point have no known owner: never returned.
        state[_SEMAPHORE_STATE] = (state.pop("_value"), {})
        _counting.switch(semaphore, {"__doc__": type(semaphore).__doc__, "_value": _VALUE})


def stop_counting(semaphore: Any) -> None:
    state = semaphore.__dict__
    if _SEMAPHORE_STATE in state:
        _counting.restore(semaphore)
        state["_value"] = state.pop(_SEMAPHORE_STATE)[0]


def repair_semaphore(semaphore: Any, me: int) -> bool:
    _clear_waiters(semaphore._cond)
    state = semaphore.__dict__
    value, held = state[_SEMAPHORE_STATE]
    mine = held.get(me, 0)
    # Summed over the other threads, so a permit one thread acquired and
    # another released (a hand-off, a signal) is not returned twice.
    others: int = sum(count for ident, count in held.items() if ident != me)
    if others > 0:
        value += others
        bound = getattr(semaphore, "_initial_value", None)
        if bound is not None:
            value = min(value, bound)
    state[_SEMAPHORE_STATE] = (value, {me: mine} if mine else {})
    return others > 0


class Kind:
    """How one tracked object is handled at fork: where its lock is, whether
    that lock is reentrant, and what else the child repairs."""

    __slots__ = ("lock_of", "reentrant", "repair")

    def __init__(
        self,
        lock_of: Callable[[Any], Any] | None,
        reentrant: bool,
        repair: Callable[[Any, int], bool] | None,
    ) -> None:
        self.lock_of = lock_of
        self.reentrant = reentrant
        self.repair = repair


# One Kind per way of handling, shared by the entries: each object a fork
# reads is a page it may have to copy (see _prepare).
_kinds: dict[tuple[str | None, bool, Callable[[Any, int], bool] | None], Kind] = {}


def _sharedkind_of(
    lock_path: str | None, reentrant: bool, repair: Callable[[Any, int], bool] | None
) -> Kind:
    key = (lock_path, reentrant, repair)
    kind = _kinds.get(key)
    if kind is None:
        lock_of = None if lock_path is None else attrgetter(lock_path)
        kind = _kinds.setdefault(key, Kind(lock_of, reentrant, repair))
    return kind


_SUPPORTED = (
    "threading.Lock, RLock, Condition, Semaphore, BoundedSemaphore and Event, "
    "queue.Queue and concurrent.futures.ThreadPoolExecutor"
)


def kind_of(obj: object) -> Kind:
    """How ``obj`` is handled, or TypeError if it cannot be tracked."""
    if isinstance(obj, LOCK):
        return _sharedkind_of(None, False, None)
    if isinstance(obj, RLOCKS):
        return _sharedkind_of(None, True, None)
    lock_path: str
    repair: Callable[[Any, int], bool]
    queue = sys.modules.get("queue")
    executors = sys.modules.get("concurrent.futures.thread")
    if isinstance(obj, threading.Condition):
        lock_path, repair = "_lock", _repair_condition
    elif isinstance(obj, threading.Semaphore):
        lock_path, repair = "_cond._lock", repair_semaphore
    elif isinstance(obj, threading.Event):
        lock_path, repair = "_cond._lock", _repair_event
    elif queue is not None and isinstance(obj, queue.Queue):
        lock_path, repair = "mutex", _repair_queue
    elif executors is not None and isinstance(obj, executors.ThreadPoolExecutor):
        lock_path, repair = "_shutdown_lock", repair_executor
    else:
        cls = type(obj)
        raise TypeError(f"track() takes a {_SUPPORTED}, not {cls.__module__}.{cls.__qualname__}")
    lock = attrgetter(lock_path)(obj)
    if isinstance(lock, LOCK):
        return _sharedkind_of(lock_path, False, repair)
    if isinstance(lock, RLOCKS):
        return _sharedkind_of(lock_path, True, repair)
    cls = type(lock)
    raise TypeError(
        f"track() needs the lock of {type(obj).__name__} to be a threading.Lock or RLock, "
        f"not {cls.__module__}.{cls.__qualname__}"
    )
