"""A program that is not ready to fork: a thread logs and prints while the
program would fork, and a SQLite connection is open. Look at it with
``python -m atfork doctor examples/busy.py``."""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
log = logging.getLogger("busy")
db = sqlite3.connect(":memory:")


def poll() -> None:
    while True:
        log.info("polling")
        time.sleep(0.1)


threading.Thread(target=poll, name="poller", daemon=True).start()
