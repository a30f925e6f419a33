"""Fresh text streams for a forked child, shared by the stdio and logging
integrations.

A buffered stream inherited through fork can be unusable in the child: its
``BufferedWriter`` lock may be held by a thread that does not exist there
(CPython gh-84579), and its buffer holds the parent's pending output, which
the child would write a second time. Neither can be repaired from Python, so
the child gets a new stream on the same file descriptor, and the inherited
one is set aside for good: flushing or closing it would hang or repeat the
parent's output, and so would its finalizer (a stream is flushed and closed
when it is garbage collected, or destroyed at interpreter exit).
"""

from __future__ import annotations

import io
from typing import Any, Callable

__all__ = ["fresh_copy", "keep_forever", "replaceable", "replaced"]

#: In a child, the standard streams the stdio integration replaced: id of
#: the inherited object -> its replacement. The logging integration points
#: handlers at the replacements. An id stays valid: the inherited object is
#: never freed (see keep_forever).
replaced: dict[int, io.TextIOWrapper] = {}


def replaceable(stream: object) -> bool:
    """True for an open text stream over a file descriptor, the kind
    :func:`open` and the interpreter make: a ``TextIOWrapper`` over a
    ``BufferedWriter`` (or, unbuffered, directly) over a ``FileIO``."""
    if type(stream) is not io.TextIOWrapper:
        return False
    try:
        buffer = stream.buffer
    except ValueError:  # detached
        return False
    raw = buffer.raw if type(buffer) is io.BufferedWriter else buffer
    return type(raw) is io.FileIO and not raw.closed


def fresh_copy(stream: io.TextIOWrapper) -> io.TextIOWrapper:
    """A new stream like ``stream`` (a :func:`replaceable` one) on the same
    file descriptor, with an empty buffer and free locks.

    It has the same encoding, errors, line buffering, write-through, buffer
    kind, ``name`` and ``mode``; it does not own the descriptor (closing it
    leaves the descriptor open, since the inherited stream still refers to
    it). Nothing of the inherited stream is flushed, closed or locked.
    """
    buffer: Any = stream.buffer
    buffered = type(buffer) is io.BufferedWriter
    raw = buffer.raw if buffered else buffer
    new_raw = io.FileIO(raw.fileno(), raw.mode, closefd=False)
    new_raw.name = raw.name  # "<stdout>", or the path of a log file
    new_buffer: Any = new_raw
    if buffered:
        # The size io.open() would choose: the file's block size.
        size = getattr(new_raw, "_blksize", 0)
        new_buffer = io.BufferedWriter(new_raw, size if size > 1 else io.DEFAULT_BUFFER_SIZE)
    new = io.TextIOWrapper(
        new_buffer,
        encoding=stream.encoding,
        errors=stream.errors,
        # On POSIX, "\n" and the default (None) write the same bytes; the
        # configured value cannot be read back from a TextIOWrapper.
        newline="\n",
        line_buffering=stream.line_buffering,
        write_through=stream.write_through,
    )
    mode = getattr(stream, "mode", None)
    if mode is not None:
        # An instance attribute, as open() and the interpreter set it.
        setattr(new, "mode", mode)  # noqa: B010  (typeshed declares it read-only)
    return new


def _find_incref() -> Callable[[object], None] | None:
    try:
        import ctypes

        incref = ctypes.pythonapi.Py_IncRef
    except (ImportError, AttributeError, OSError):  # pragma: no cover  (CPython has them)
        return None
    incref.argtypes = [ctypes.py_object]
    incref.restype = None
    return incref


# Looked up once, when an integration that replaces streams is imported:
# importing ctypes in a child at fork time would cost milliseconds.
_incref = _find_incref()

# Also a strong reference, for an interpreter without ctypes.
_kept: list[object] = []


def keep_forever(stream: object) -> None:
    """Keep an inherited stream alive until the process ends, so that it is
    never finalized: finalizing would flush it (repeating the parent's
    pending output, or hanging on its lock) and close it.

    A module-level reference is not enough: interpreter exit clears modules
    and collects what they held. One reference is leaked instead (a stream
    and its buffer, a few kilobytes per replacement), so the object outlives
    the interpreter's teardown and the process ends without finalizing it.
    """
    _kept.append(stream)
    if _incref is not None:
        _incref(stream)
