"""Working ``sys.stdout``, ``sys.stderr`` and buffered files in every
forked child.

What breaks after fork without it
    ``sys.stdout`` and ``sys.stderr``, and every file opened for writing,
    are buffered, with a lock in their ``BufferedWriter`` held for the whole
    of each write. A thread writing to one at the moment another thread
    forks (blocked on a full pipe, a slow disk or NFS server, say) leaves
    that lock held in the child, where no thread will release it: the
    child's next ``print()``, or its next write to that file, hangs (CPython
    gh-84579, open since 2020). That holds for a module-level log file, a
    wrapper installed as ``sys.stdout`` with a file of its own, a file a
    logging handler keeps in an attribute of its own, as much as for the
    standard streams. And output still in a buffer at fork (the
    ``BufferedWriter``'s, and the pending text of the ``TextIOWrapper``
    above it) is copied into the child, which writes it a second time when
    it flushes (at its next flush, or at exit).

What the standard library does, 3.9 - 3.14
    Nothing: the I/O stack has no fork handling, and no public API releases
    a ``BufferedWriter``'s lock or empties its buffer without writing it.
    (Calling the C type's ``__init__`` again does both, on every version:
    this module relies on it.)

What this module does
    prepare, parent
        Nothing.
    child
        First, before every other atfork child callback, each buffered
        file it covers (see "Buffered files" below), the standard streams
        among them, is repaired in place: the same object gets a free lock
        and an empty buffer (the parent's buffered output, the parent
        writes), keeping its raw file, buffer size, encoding, newline and
        every other setting. Nothing of the parent's is written, flushed or
        closed. ``sys.stdout`` and ``sys.stderr`` stay the objects they
        were, so every reference to them (``out = sys.stdout``, a logging
        handler's stream) writes, and is flushed, as in any process.

Buffered files
    Covered: each open ``io.BufferedWriter`` and ``io.BufferedRandom`` over
    a file descriptor (an ``io.FileIO``) or a socket (``socket.makefile()``),
    and each ``io.TextIOWrapper`` over one (subclasses included), that

    * existed at :func:`enable` (the heap is scanned once then);
    * ``open()`` returned since: while this integration or the logging one
      is enabled, ``builtins.open`` and ``io.open`` are one wrapper that
      notes, weakly, each file it returns (``os.fdopen``, ``tempfile``,
      ``pathlib``, ``subprocess`` pipes and ``logging.FileHandler`` all call
      it); disabling the last of the two puts the original back, unless
      something replaced it since;
    * is, in the child, ``sys.stdout``, ``sys.stderr``, ``sys.__stdout__`` or
      ``sys.__stderr__``, or an attribute of one (a wrapper installed as
      ``sys.stdout``), or an attribute of a logging handler;
    * was given to :func:`track`, whatever its raw file.

    Not covered: a file made after :func:`enable` other than by ``open()``
    (its types called directly, ``socket.makefile()``, an ``open`` saved
    under another name before, as ``from io import open`` does) and held
    neither by a logging handler nor by a standard stream, one attribute
    down, unless given to :func:`track`; a file out of the garbage
    collector's reach at :func:`enable` (moved there by ``gc.freeze()``);
    a buffered file over memory (``io.BytesIO``: the child's own copy),
    unless tracked. Readers are not repaired (a ``BufferedReader``, or a
    text file over one): starting one afresh would drop its read-ahead, and
    with it the child's place in the file. A ``BufferedRandom`` does lose
    its read-ahead: the child's next read starts at the descriptor's
    offset, which it shares with the parent anyway.

The descriptors are not touched: ``1`` and ``2`` are shared with the parent
as before. A parent
that ends with ``os._exit()`` right after the fork (a daemon's first fork)
drops what was still buffered then: neither process writes it. Flush before
such a fork.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import TypeVar

from atfork.integrations import _buffers

__all__ = ["disable", "enable", "is_enabled", "track"]

F = TypeVar("F")


def enable() -> None:
    """Repair ``sys.stdout``, ``sys.stderr`` and the other buffered files in
    every forked child; calling it again does nothing.

    .. versionadded:: 0.1
    """
    _buffers.start(__name__)


def disable() -> None:
    """Stop repairing the buffered files in children forked from now on
    (the logging integration, while enabled, still repairs them); calling
    it again does nothing.

    .. versionadded:: 0.1
    """
    _buffers.stop(__name__)


def track(file: F) -> F:
    """Repair ``file`` in every forked child too, and return it:
    ``out = track(io.BufferedWriter(raw))``.

    For a buffered file the integrations cannot find by themselves (see
    "Finding" in the module documentation): one made other than by
    ``open()`` after :func:`enable`, held neither by a logging handler nor
    by a standard stream. In the child it is repaired in place like a found
    one (a free lock, and none of the parent's buffered output), whatever
    its raw file is, while the stdio or the logging integration is enabled.
    Held by a weak reference: tracking ends when the file is garbage.
    Tracking it twice does nothing; tracking works whether or not the
    integration is enabled.

    :param file: an ``io.BufferedWriter``, an ``io.BufferedRandom``, or an
        ``io.TextIOWrapper`` over one of them (subclasses included).
    :returns: ``file`` itself.
    :raises TypeError: any other object (a reader among them).

    .. versionadded:: 0.1
    """
    return _buffers.track(file)


def is_enabled() -> bool:
    """True between :func:`enable` and :func:`disable`.

    .. versionadded:: 0.1
    """
    return _buffers.is_started(__name__)
