"""Log rotation shared by forked processes (the ``shared_rotation`` option
of the logging integration).

After a fork, the parent and its children each hold a copy of the same
``RotatingFileHandler`` (or ``TimedRotatingFileHandler``), and each decides
on its own when to rotate. When one of them rotates, the others go on
writing to the renamed file, and rotate it again later: renaming over a
backup, or deleting one as the oldest, removes lines another process wrote.
Two processes rotating at once rename each other's files.

Shared rotation makes each ``emit`` of such a handler, in every process,
run under an inter-process lock (a POSIX record lock, ``lockf``, on a file
next to the log file named ``<log file>.lock``): under it the handler first
reopens its file if another process rotated it (the path names another file
than the one it writes to), then decides whether to rotate and writes.
Record locks belong to a process, not to a file descriptor, so a child's
inherited lock file descriptor excludes its parent. Each record costs two
``lockf`` calls, a ``stat`` and an ``fstat``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover  (not POSIX: no fork, nothing to share)
    fcntl = None  # type: ignore[assignment]

__all__ = ["share", "unshare"]

# Handlers whose emit() is wrapped, to undo it.
_shared: weakref.WeakSet[logging.Handler] = weakref.WeakSet()


class _SharedEmit:
    """The ``emit`` of one shared rotating handler (an instance attribute,
    so ``Handler.handle`` calls it in place of the class's)."""

    __slots__ = ("_fd", "_handler")

    def __init__(self, handler: logging.Handler, fd: int) -> None:
        # Weakly: the handler holds this object.
        self._handler = weakref.ref(handler)
        self._fd = fd

    def __call__(self, record: logging.LogRecord) -> None:
        handler: Any = self._handler()
        if handler is None:
            return
        emit = type(handler).emit
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        except OSError:  # no lock to be had (ENOLCK): write as without the option
            emit(handler, record)
            return
        try:
            _follow(handler)
            emit(handler, record)
        except Exception:  # noqa: BLE001  (as logging does: a log call must not raise)
            handler.handleError(record)
        finally:
            with contextlib.suppress(OSError):  # the lock goes with the descriptor anyway
                fcntl.lockf(self._fd, fcntl.LOCK_UN)


def _follow(handler: Any) -> None:
    """Reopen ``handler``'s file if another process rotated it; move to its
    end, where the next record goes (rotation by size checks the position)."""
    stream = handler.stream
    if stream is None or "a" not in handler.mode:  # not open yet; "w" would truncate
        return
    try:
        on_disk = os.stat(handler.baseFilename)
        ours = os.fstat(stream.fileno())
        moved = (on_disk.st_ino, on_disk.st_dev) != (ours.st_ino, ours.st_dev)
    except FileNotFoundError:
        moved = True
    if moved:
        handler.stream = None
        stream.close()
        stream = handler.stream = handler._open()
        at = getattr(handler, "rolloverAt", None)
        if at is not None:  # timed rotation: the next one is due after now
            now = int(time.time())
            at = handler.computeRollover(now)
            while at <= now:
                at += handler.interval
            handler.rolloverAt = at
    stream.seek(0, os.SEEK_END)


def share(handler: logging.Handler) -> None:
    """Make ``handler`` (a rotating file handler) rotate under the lock; do
    nothing if it does already, or if its lock file cannot be opened."""
    if fcntl is None or isinstance(vars(handler).get("emit"), _SharedEmit):
        return
    path = getattr(handler, "baseFilename", None)
    if not isinstance(path, str):
        return
    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return
    weakref.finalize(handler, os.close, fd)
    vars(handler)["emit"] = _SharedEmit(handler, fd)
    _shared.add(handler)


def unshare() -> None:
    """Give every shared handler its own ``emit`` back."""
    for handler in list(_shared):
        attributes = vars(handler)
        if isinstance(attributes.get("emit"), _SharedEmit):
            del attributes["emit"]
    _shared.clear()
