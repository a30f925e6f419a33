"""SQLite through the standard library's sqlite3.

SQLite's locks are POSIX advisory locks, which a child does not inherit; its
connection object still believes it holds the parent's transaction. When the
child finalises it (garbage collection, interpreter exit, an explicit
``close()``), SQLite rolls that transaction back and deletes the journal the
parent is writing: the parent's COMMIT then fails with "disk I/O error"
(https://www.sqlite.org/howtocorrupt.html, section 2.6).

sqlite3.Connection can be neither weakly referenced nor switched to another
class. In the child an inherited connection is therefore kept alive for
good (never finalised, also not at exit) and gets an authorizer that denies
every statement, so any use fails with ``sqlite3.DatabaseError: not
authorized`` before it touches the file. ``close()`` itself is a C method
nothing can intercept: a child must not call it on an inherited connection.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from atfork.integrations.db import _quarantine as q

__all__ = ["track"]

_DENY = 1  # sqlite3.SQLITE_DENY


def _deny(*args: Any) -> int:
    return _DENY


def _quarantine(conn: Any, neutralise: q.Neutraliser) -> None:
    q.keep_forever(conn)
    sqlite3 = sys.modules["sqlite3"]
    # Closed, or made in another thread: ProgrammingError, and nothing to deny.
    with contextlib.suppress(sqlite3.ProgrammingError):
        # It also expires every prepared statement, so cached ones are
        # authorized again before they run.
        conn.set_authorizer(_deny)


def _alive(conn: Any) -> bool:
    try:
        conn.total_changes  # noqa: B018  (raises once the connection is closed)
    except sys.modules["sqlite3"].ProgrammingError:
        return False
    return True


def quarantine_for(conn: Any) -> q.Quarantine | None:
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is None or not isinstance(conn, sqlite3.Connection):
        return None
    q.prepare_keep_forever()
    return _quarantine


def track(obj: Any, *, auto: bool = False) -> bool:
    if quarantine_for(obj) is None:
        return False
    # Held strongly (no weak references to it): released once it is closed.
    q.register(obj, _quarantine, auto=auto, alive=_alive)
    return True
