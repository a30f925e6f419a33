"""Fresh ``sys.stdout`` and ``sys.stderr`` in every forked child.

What breaks after fork without it
    ``sys.stdout`` and ``sys.stderr`` are buffered streams with a lock in
    their ``BufferedWriter``. A thread writing to one at the moment another
    thread forks (blocked on a full pipe, say) leaves that lock held in the
    child, where no thread will release it: the child's next ``print()``
    hangs (CPython gh-84579, open since 2020). And output still in the buffer
    at fork is copied into the child, which writes it a second time when it
    flushes (at its next flush, or at exit).

What the standard library does, 3.9 - 3.13
    Nothing: the I/O stack has no fork handling, and no Python API can
    release a ``BufferedWriter``'s lock or empty its buffer without writing
    it.

What this module does
    prepare
        It has a replacement ready for each of the interpreter's standard
        streams (made once, and again only when the stream or its
        configuration changed), so that the child need not build one.
    parent
        Nothing.
    child
        If ``sys.stdout`` is the interpreter's own stream (it is
        ``sys.__stdout__``, a text stream over a file descriptor), it is
        replaced, together with ``sys.__stdout__``, by a new stream on the
        same file descriptor with the same encoding, errors, line buffering
        and write-through, with an empty buffer and a free lock; the same
        for ``sys.stderr``. A stream the program installed itself (a
        ``StringIO``, a wrapper) is left alone. The inherited stream is
        never flushed or closed in the child, not even by garbage collection
        or at interpreter exit: its buffered output is the parent's, which
        the parent writes. The logging integration, when enabled, points
        handlers that wrote to a replaced stream at its replacement.

The descriptors are not touched: ``1`` and ``2`` are shared with the parent
as before. Code that kept a reference to the old object (``out =
sys.stdout``) still writes through it, with the old behaviour.

.. versionadded:: 0.1
"""

from __future__ import annotations

import sys

import atfork
from atfork.integrations import PRIORITY_STDIO, _streams

__all__ = ["disable", "enable", "is_enabled"]

_hook: atfork.Hook | None = None

# The standard streams: (sys attribute, the interpreter's own object).
_NAMES = (("stdout", "__stdout__"), ("stderr", "__stderr__"))


def _prepare() -> None:
    _streams.prepare_spares()


def _child() -> None:
    replaced = _streams.replaced
    replaced.clear()
    for name, own_name in _NAMES:
        stream = getattr(sys, name)
        if (
            stream is None
            or stream is not getattr(sys, own_name)
            or not _streams.replaceable(stream)
        ):
            continue
        try:
            new = _streams.take_spare(stream)
        except OSError:  # its descriptor was closed: nothing to write to anyway
            continue
        _streams.keep_forever(stream)
        setattr(sys, own_name, new)
        setattr(sys, name, new)
        replaced[id(stream)] = new


def enable() -> None:
    """Give every forked child fresh ``sys.stdout`` and ``sys.stderr``
    objects; calling it again does nothing.

    .. versionadded:: 0.1
    """
    global _hook
    if _hook is None:
        _hook = atfork.atfork(_prepare, None, _child, priority=PRIORITY_STDIO, name=__name__)


def disable() -> None:
    """Stop replacing the standard streams in children forked from now on;
    calling it again does nothing.

    .. versionadded:: 0.1
    """
    global _hook
    if _hook is not None:
        _hook.unregister()
        _hook = None
        _streams.replaced.clear()


def is_enabled() -> bool:
    """True between :func:`enable` and :func:`disable`.

    .. versionadded:: 0.1
    """
    return _hook is not None
