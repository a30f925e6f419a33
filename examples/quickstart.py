"""A first look at atfork: ordered hooks, a handle to unregister, and a child
that never hangs on a lock another thread held at the fork."""

from __future__ import annotations

import os
import threading
import time

import atfork
from atfork.testing import run_in_child

# A cache shared by the threads of this process, guarded by a lock.
cache_lock = threading.Lock()
cache: dict[str, str] = {"greeting": "hello"}


def fresh_cache_in_child() -> None:
    """The child starts with a new lock: the parent's may be held forever."""
    global cache_lock
    cache_lock = threading.Lock()


atfork.atfork(child=fresh_cache_in_child, name="cache")

# Hooks run in pthread_atfork order; a higher priority runs earlier after the
# fork and later before it.
order: list[str] = []
atfork.atfork(prepare=lambda: order.append("prepare A"), child=lambda: order.append("child A"))
atfork.atfork(
    prepare=lambda: order.append("prepare B"), child=lambda: order.append("child B"), priority=1
)

# A worker thread holds the lock while the process forks.
holding = threading.Event()


def worker() -> None:
    with cache_lock:
        holding.set()
        time.sleep(1)


threading.Thread(target=worker).start()
holding.wait()


def use_cache() -> str:
    with cache_lock:  # without the child hook, this would wait forever
        return f"child {os.getpid()} read {cache['greeting']!r}; hooks ran: {order}"


print(run_in_child(use_cache, timeout=10))

# A hook used as a context manager is unregistered when the block ends.
with atfork.atfork(child=lambda: print("  (only inside the block)")) as hook:
    run_in_child(lambda: None)
print("after the block the hook is", "active" if hook.active else "inactive")
