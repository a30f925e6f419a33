"""multiprocessing queues after a plain ``os.fork()``.

A :class:`multiprocessing.Queue` already used has a feeder thread; after a
plain :func:`os.fork` the child's queue still believes it has one, so
``put()`` buffers the item and nothing sends it. multiprocessing repairs
its queues (``Queue._after_fork``) only in its own children. Used by
``atfork.integrations.threading.enable()``.
"""

from __future__ import annotations

import sys

__all__ = ["repair"]


def repair(me: int) -> None:
    """Reset used multiprocessing queues as multiprocessing's children do."""
    util = sys.modules.get("multiprocessing.util")
    queues = sys.modules.get("multiprocessing.queues")
    if util is None or queues is None:
        return
    after_fork = queues.Queue._after_fork
    for (_, _, func), queue in list(util._afterfork_registry.items()):
        if func is after_fork and getattr(queue, "_thread", None) is not None:
            func(queue)
