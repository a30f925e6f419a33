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

import contextlib
import io
import sys
from typing import Any

from atfork.integrations._toolkit import prepare_keep_forever

__all__ = [
    "fresh_copy",
    "prepare_spares",
    "replaceable",
    "replaced",
    "take_spare",
]

#: In a child, the standard streams the stdio integration replaced: id of
#: the inherited object -> its replacement. The logging integration points
#: handlers at the replacements. An id stays valid: the inherited object is
#: never freed (see ``_toolkit.keep_forever``).
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


def _config(stream: io.TextIOWrapper) -> tuple[object, ...]:
    return (stream.encoding, stream.errors, stream.line_buffering, stream.write_through)


# Replacements made ahead, in the parent, for the standard streams: id of
# the stream -> (the stream, the replacement). In a child, taking one is a
# dictionary lookup; making one there writes to dozens of pages of memory
# shared with the parent, each a page fault.
_spares: dict[int, tuple[io.TextIOWrapper, io.TextIOWrapper]] = {}
# The sys.stdout and sys.stderr the spares were made for.
_made_for_out: object = None
_made_for_err: object = None


def prepare_spares() -> None:
    """Before a fork: have replacements ready for the standard streams
    (``sys.stdout``, ``sys.stderr``, ``sys.__stdout__``, ``sys.__stderr__``)
    that are :func:`replaceable`. Made once, and again when ``sys.stdout``
    or ``sys.stderr`` changed; a stream reconfigured since is caught in the
    child (:func:`take_spare`)."""
    global _made_for_out, _made_for_err
    if sys.stdout is _made_for_out and sys.stderr is _made_for_err:
        return  # checked with as few objects touched as possible: see _spares
    _spares.clear()
    streams: tuple[Any, ...] = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for stream in streams:
        if id(stream) not in _spares and replaceable(stream):
            with contextlib.suppress(OSError):  # its descriptor was closed: nothing to replace
                _spares[id(stream)] = (stream, fresh_copy(stream))
    _made_for_out, _made_for_err = sys.stdout, sys.stderr


def take_spare(stream: io.TextIOWrapper) -> io.TextIOWrapper:
    """In a child: the replacement made ahead for ``stream`` if it still
    fits (same stream, same configuration), or else a new one
    (:func:`fresh_copy`). A replacement is taken once.

    :raises OSError: a new one could not be made (the descriptor is closed).
    """
    entry = _spares.pop(id(stream), None)
    if entry is not None and entry[0] is stream and _config(entry[1]) == _config(stream):
        return entry[1]
    return fresh_copy(stream)


# Ready when an integration that replaces streams is imported, not in a
# child at fork time.
prepare_keep_forever()
