"""Registrations from several threads while the main thread forks hundreds of times."""

from __future__ import annotations

import sys
import threading
from typing import Callable

import atfork
from atfork.testing import run_in_child

FORKS = 300
THREADS = 4
KEEP = 50  # registrations each thread leaves in place


def marker(key: int) -> Callable[[], None]:
    """A child callback that records that it ran."""

    def mark() -> None:
        ran[key] = 1

    return mark


ran: dict[int, int] = {}


def test_forks_while_threads_register_and_unregister() -> None:
    """No child hangs, every child can register at once, and no registration is lost."""
    stop = threading.Event()
    kept: list[list[atfork.Hook]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []

    def churn(index: int) -> None:
        try:
            tag = 0
            while not stop.is_set():
                hook = atfork.atfork(child=marker(index * 1_000_000 + tag))
                if tag % 3 == 0 and len(kept[index]) < KEEP:
                    kept[index].append(hook)  # stays registered to the end
                else:
                    hook.unregister()
                tag += 1

        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def child() -> bool:
        return atfork.atfork(child=lambda: None).active

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(THREADS)]
    # The churning threads never block: hand the GIL over more often, so the
    # forking thread is not starved (this changes the speed, not the races).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    for thread in threads:
        thread.start()
    try:
        for _ in range(FORKS):
            assert run_in_child(child, timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        sys.setswitchinterval(interval)
    assert [] == errors
    survivors = [hook for hooks in kept for hook in hooks]
    assert all(hook.active for hook in survivors)
    ran.clear()
    called = run_in_child(lambda: set(ran), timeout=60)
    expected = {
        index * 1_000_000 + tag
        for index in range(THREADS)
        for tag in range(0, 3 * len(kept[index]), 3)
    }
    assert expected == called
