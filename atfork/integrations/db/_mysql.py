"""MySQL and MariaDB through PyMySQL (pure Python).

PyMySQL's ``close()`` sends COM_QUIT, which ends the server session that
parent and child share; its finaliser sends nothing.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from atfork.integrations.db import _quarantine as q

__all__ = ["install", "quarantine_for", "track"]

_IN_TRANS = 1  # pymysql.constants.SERVER_STATUS.SERVER_STATUS_IN_TRANS

_BLOCKED = (
    "connect",
    "cursor",
    "query",
    "commit",
    "begin",
    "ping",
    "select_db",
    "autocommit",
    "set_character_set",
    "set_charset",
    "show_warnings",
    "kill",
    "next_result",
    "__enter__",
)


def _overrides(cls: type) -> dict[str, Any]:
    what = f"{cls.__module__}.{cls.__qualname__}"

    def rollback(self: Any) -> None:
        # Nothing to undo outside a transaction (what a pool's reset does
        # on return); inside one, the transaction is the parent's.
        if self.server_status & _IN_TRANS:
            raise q.inherited_error(what, "rollback")

    return {"rollback": rollback}


@q.per_type
def quarantine_for(conn: Any) -> q.Quarantine | None:
    """How to quarantine a PyMySQL connection, or None."""
    base = getattr(sys.modules.get("pymysql.connections"), "Connection", None)
    if not isinstance(base, type) or not isinstance(conn, base):
        return None
    original = q.original_class(type(conn))
    # Its socket neutralised, close()'s COM_QUIT fails locally.
    return q.sock_quarantine(q.quarantine_class(original, _BLOCKED, _overrides(original)))


def track(obj: Any, *, auto: bool = False) -> bool:
    return q.track_connection(obj, quarantine_for, auto=auto)


def install(covers: Callable[[str], bool]) -> dict[str, Callable[[Any], None]]:

    def active() -> bool:
        return covers("pymysql")

    def on_pymysql(module: Any) -> None:
        if active():
            base = sys.modules["pymysql.connections"].Connection
            q.patch(base, "__init__", q.registering_init(active, track))

    return {"pymysql": on_pymysql}
