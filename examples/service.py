"""A small forking service: a background thread logs while the main thread
forks workers. Run it with ``python -m atfork run examples/service.py``, or
look at it with ``python -m atfork doctor examples/service.py``."""

from __future__ import annotations

import logging
import os
import threading
import time

import atfork
from atfork.testing import run_in_child

logging.basicConfig(level=logging.INFO, format="%(process)d %(message)s")
log = logging.getLogger("service")
cache: dict[str, str] = {}


def forget_cache() -> None:
    """A worker starts with an empty cache of its own."""
    cache.clear()


atfork.atfork(child=forget_cache, name="service.forget_cache")


def heartbeat() -> None:
    while True:
        log.info("heartbeat")
        time.sleep(0.01)


def work(number: int) -> str:
    log.info("worker %d started", number)
    return f"worker {number} done in process {os.getpid()}"


if __name__ == "__main__":
    threading.Thread(target=heartbeat, name="heartbeat", daemon=True).start()
    for number in range(3):
        print(run_in_child(work, number, timeout=10))
