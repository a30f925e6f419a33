"""asyncio selector event loops inherited through fork.

An asyncio selector event loop shares its epoll set (a kernel object) with
the parent (bpo-21998): a child that closes its copy of the loop
unregisters the parent's self-pipe from the parent's epoll set, and the
parent's ``call_soon_threadsafe()`` no longer wakes its loop; both processes
read the same self-pipe, and on 3.9 - 3.11 the child's signals are written
to the parent's loop. From 3.12 asyncio forgets the running loop in the
child, not the loop object's selector. Used by
``atfork.integrations.threading.enable()``.
"""

from __future__ import annotations

import signal
import weakref
from typing import Any

__all__ = ["found", "own_selector", "repair"]


#: Selector event loops made since threading.enable(), or found by it.
found: weakref.WeakSet[Any] = weakref.WeakSet()


def repair(me: int) -> None:
    """Give each loop :data:`found` that is not closed, and not running in
    another thread, a selector and a self-pipe of its own."""
    if not found:
        return
    for loop in list(found):
        if loop.is_closed() or loop._thread_id not in (None, me):
            continue  # a loop running in another thread cannot be used here
        own_selector(loop)


def own_selector(loop: Any) -> None:
    """Give ``loop`` a selector and a self-pipe of its own.

    Closing the inherited selector closes only this process's descriptor of
    the kernel's epoll set: it unregisters nothing, so the parent's set is
    untouched. Closing the self-pipe's sockets likewise leaves the parent's.
    """
    old = loop._selector
    new = type(old)()
    for key in list(old.get_map().values()):
        try:
            new.register(key.fileobj, key.events, key.data)
        except (OSError, ValueError):  # closed under the loop's feet: nothing to watch
            continue
    loop._selector = new
    old.close()
    if loop._csock is None:
        return
    old_fd = loop._csock.fileno()
    loop._close_self_pipe()
    loop._make_self_pipe()
    if getattr(loop, "_signal_handlers", None):
        # Up to 3.11 the child keeps the loop's signal wake-up fd: point it
        # at the new self-pipe, unless it was pointing elsewhere.
        try:
            previous = signal.set_wakeup_fd(loop._csock.fileno())
            if previous != old_fd:
                signal.set_wakeup_fd(previous)
        except (ValueError, OSError):  # not the main thread: no wake-up fd here
            pass
