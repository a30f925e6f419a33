"""Imports another thread was in the middle of at a fork, undone in the child.

A module another thread was importing keeps its per-module import lock
(``importlib._bootstrap._ModuleLock``) owned by that thread, and stays half
executed in :data:`sys.modules`: the child's ``import`` of it would hang.
The standard library re-initialises only the global import lock. Used by
``atfork.integrations.threading.enable()``.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["repair"]


def repair(me: int) -> None:
    """Undo the imports other threads were in the middle of."""
    bootstrap = sys.modules.get("_frozen_importlib")
    module_locks: dict[str, Any] | None = getattr(bootstrap, "_module_locks", None)
    if module_locks:
        for name, ref in list(module_locks.items()):
            lock = ref()
            if lock is None:
                continue
            owner = getattr(lock, "owner", None)
            if owner == me:
                # This thread's own import goes on. The other threads in the
                # lock's bookkeeping are gone: no wake-up is owed to them.
                lock.lock._at_fork_reinit()
                lock.wakeup._at_fork_reinit()
                lock.waiters = type(lock.waiters)()
                continue
            # A lock another thread owned, or was updating, is dropped: the
            # next import of the module makes a new one.
            if module_locks.get(name) is ref:
                del module_locks[name]
            if owner is not None:
                module = sys.modules.get(name)
                if getattr(getattr(module, "__spec__", None), "_initializing", False):
                    del sys.modules[name]  # half executed: imported afresh
    # The threads each thread waits for (the import deadlock detector's
    # graph): a dict by thread id up to 3.11, a weak value dictionary later.
    blocking_on: Any = getattr(bootstrap, "_blocking_on", None)
    waiting = getattr(blocking_on, "data", blocking_on)
    if waiting:
        for ident in list(waiting):
            if ident != me:
                waiting.pop(ident, None)
