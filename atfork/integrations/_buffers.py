"""Buffered files repaired in place in a forked child, shared by the stdio
and logging integrations (which files, and what not: the stdio
integration's "Buffered files").

Every ``io.BufferedWriter`` and ``io.BufferedRandom`` holds a lock for the
whole of each write and flush, system call included: a thread blocked in a
write at the fork leaves it held in the child, whose first write or flush
of that file then hangs (CPython gh-84579); and the child's copy of the
buffer (and of a ``TextIOWrapper``'s pending text above it, up to a chunk)
holds the parent's output, which the child would write again. The standard
library does nothing about either (3.9 - 3.14; on the free-threaded build a
thread blocked in a system call has released its critical sections, not
this lock).

prepare, parent
    Nothing.
child (:data:`~atfork.integrations.PRIORITY_BUFFERS`, before every other
atfork child callback: any of them may print or log, and a failure is
reported on ``sys.stderr``)
    A buffered file is initialised again, the same object, on its own raw
    file and with the buffer size it had, by the C type's ``__init__``
    (``io.BufferedWriter.__init__(file, file.raw, size)``, never a
    subclass's). CPython's ``_buffered_init`` frees the lock and the buffer
    and allocates new ones without taking the lock, on every version from
    3.9 to 3.14; the size is read back from ``__sizeof__`` (the type's basic
    size plus the buffer's, ``buffered_sizeof``). A text file over one keeps
    every setting (its ``newline`` could not be read back to make it again):
    its buffer is initialised on a throw-away ``io.BytesIO``, the text file
    flushed (its pending text goes there), and the buffer initialised again
    on its real raw file. The real raw file is never written, flushed or
    closed in the child; a raw file that ``__init__`` would refuse (closed)
    is left alone, since a refused ``__init__`` leaves the object unusable.

On the free-threaded build each file object also has a mutex of its own,
which its methods take, and which CPython can leave locked in the child (a
contended mutex handed to a waiting thread just before the fork): in the
child, before any file is used, the mutex of each one found is cleared.

Finding: a heap scan (``gc.get_objects()``) when the first user starts,
then a wrapper of ``open()`` that notes each file it returns; in the child,
the attributes of logging handlers and of the standard streams; and
:func:`track`. Files are held by weak references. Nothing is scanned at
fork time but those attributes.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import gc
import io
import sys
import weakref
from typing import Any, Callable, TypeVar

from atfork.integrations import PRIORITY_BUFFERS
from atfork.integrations._toolkit import FREE_THREADED, HookSlot

__all__ = ["start", "stop", "track"]

F = TypeVar("F")

_TEXT = io.TextIOWrapper
_WRITER = io.BufferedWriter
_RANDOM = io.BufferedRandom
_BUFFERED = (_WRITER, _RANDOM)
_KINDS = (_TEXT, _WRITER, _RANDOM)
# The buffer a TextIOWrapper's pending text is flushed into in the child:
# small, since the text is written straight through to the sink.
_SINK_BUFFER_SIZE = 64

# The integrations using this module (stdio, logging): it is active while
# any is. A set rather than a count: starting twice for one user is once.
_users: set[str] = set()
_hook = HookSlot()

# The files covered, by id: a weak reference to each (a KeyedRef whose key
# is the id), dropped when the file dies. Found ones are forgotten when the
# last user stops, tracked ones are kept.
_found: dict[int, weakref.KeyedRef[int, Any]] = {}
_tracked: dict[int, weakref.KeyedRef[int, Any]] = {}


def _forgetter(
    files: dict[int, weakref.KeyedRef[int, Any]],
) -> Callable[[weakref.KeyedRef[int, Any]], None]:
    # Refers to its dict itself, not to a module global: it may run while
    # the interpreter clears modules at exit.
    def forget(ref: weakref.KeyedRef[int, Any]) -> None:
        if files.get(ref.key) is ref:
            files.pop(ref.key, None)

    return forget


_forget_found = _forgetter(_found)
_forget_tracked = _forgetter(_tracked)


def _note(file: object) -> None:
    key = id(file)
    ref = _found.get(key)
    if ref is None or ref() is not file:
        _found[key] = weakref.KeyedRef(file, _forget_found, key)


def _writable_buffer(file: object) -> bool:
    """Whether ``file`` is a buffered writer, or a text file over one."""
    if isinstance(file, _TEXT):
        try:
            file = file.buffer
        except ValueError:  # detached
            return False
    return isinstance(file, _BUFFERED)


def track(file: F) -> F:
    """Repair ``file`` in every forked child, whatever its raw file, and
    return it (see the stdio integration's ``track``).

    :raises TypeError: ``file`` is not an ``io.BufferedWriter``,
        ``io.BufferedRandom``, or ``io.TextIOWrapper`` over one of them.
    """
    if not _writable_buffer(file):
        raise TypeError(
            "track() takes an io.BufferedWriter, an io.BufferedRandom or an io.TextIOWrapper "
            f"over one, not {type(file).__module__}.{type(file).__qualname__}"
        )
    key = id(file)
    ref = _tracked.get(key)
    if ref is None or ref() is not file:
        _tracked[key] = weakref.KeyedRef(file, _forget_tracked, key)
    return file


# -- finding: open() --------------------------------------------------------------

# The modules whose ``open`` is replaced, each with the function it replaced.
_OPEN_MODULES: tuple[Any, ...] = (builtins, io)
_wrapped: dict[int, tuple[Any, Any]] = {}  # id(module) -> (wrapper, original)


def _wrap_open(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def open(*args: Any, **kwargs: Any) -> Any:
        file = original(*args, **kwargs)
        # open() makes these exact types; a reader is left out.
        kind = type(file)
        if kind is _TEXT:
            buffer_kind = type(file.buffer)
            if buffer_kind is _WRITER or buffer_kind is _RANDOM:
                _note(file)
        elif kind is _WRITER or kind is _RANDOM:
            _note(file)
        return file

    return open


def _replace_open() -> None:
    wrappers: dict[int, Any] = {}  # one wrapper for both when they are the same
    for module in _OPEN_MODULES:
        original = module.open
        wrapper = wrappers.get(id(original))
        if wrapper is None:
            wrapper = wrappers[id(original)] = _wrap_open(original)
        _wrapped[id(module)] = (wrapper, original)
        module.open = wrapper


def _restore_open() -> None:
    for module in _OPEN_MODULES:
        entry = _wrapped.pop(id(module), None)
        if entry is not None and module.open is entry[0]:  # not replaced since
            module.open = entry[1]


def _scan() -> None:
    """Note the buffered writers and text files over them on the heap."""
    kinds: dict[type, bool] = {}
    for obj in gc.get_objects():
        kind = type(obj)
        wanted = kinds.get(kind)
        if wanted is None:
            wanted = kinds[kind] = issubclass(kind, _KINDS)
        if wanted and _writable_buffer(obj):
            _note(obj)


def start(user: str) -> None:
    """Start covering buffered files for ``user`` (an integration's name);
    the first user scans the heap, replaces ``open`` and registers the child
    callback."""
    first = not _users
    _users.add(user)
    if first:
        global _OB_MUTEX
        if _OB_MUTEX is None:
            _OB_MUTEX = _object_mutexes()
        _scan()
        _replace_open()
    _hook.register(child=_child, priority=PRIORITY_BUFFERS, name=__name__)


def stop(user: str) -> None:
    """Stop for ``user``; the last user puts ``open`` back and forgets the
    found files (not the tracked ones)."""
    if user not in _users:
        return
    _users.discard(user)
    if not _users:
        _restore_open()
        _hook.release()
        _found.clear()


def is_started(user: str | None = None) -> bool:
    """Whether ``user`` (or, without one, any user) has started and not
    stopped."""
    return bool(_users) if user is None else user in _users


# -- child ------------------------------------------------------------------------


def _candidates() -> dict[int, tuple[Any, bool]]:
    """The buffered and text files to look at in the child, by id, each
    with whether it was tracked (then repaired whatever its raw file)."""
    files: dict[int, tuple[Any, bool]] = {}
    for refs, tracked in ((_found, False), (_tracked, True)):  # tracked wins
        for ref in tuple(refs.values()):
            obj = ref()
            if obj is not None:
                files[ref.key] = (obj, tracked)
    holders: list[Any] = [sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__]
    logging = sys.modules.get("logging")
    handler_refs = getattr(logging, "_handlerList", ())  # weak references to every handler
    holders.extend(ref() for ref in tuple(handler_refs))
    kinds = _KINDS
    for holder in holders:
        if isinstance(holder, kinds):
            files.setdefault(id(holder), (holder, False))
        attributes = getattr(holder, "__dict__", None)  # vars(), one level
        if type(attributes) is dict:
            for value in tuple(attributes.values()):
                if isinstance(value, kinds):
                    files.setdefault(id(value), (value, False))
    return files


def _fd_raw_types() -> tuple[type, ...]:
    socket = sys.modules.get("socket")
    socket_io = getattr(socket, "SocketIO", None)
    return (io.FileIO,) if socket_io is None else (io.FileIO, socket_io)


def _raw(buffer: Any, tracked: bool, fd_raw: tuple[type, ...]) -> Any:
    """The raw file of ``buffer`` if it is to be repaired and can be: open,
    of a kind shared with the parent (or tracked), and one ``__init__``
    accepts again (a refused one would leave ``buffer`` unusable)."""
    try:
        raw = buffer.raw
        if raw is None or raw.closed:
            return None
        if not tracked and not isinstance(raw, fd_raw):
            return None
        if isinstance(buffer, _RANDOM):
            usable = raw.readable() and raw.writable() and raw.seekable()
        else:
            usable = raw.writable()
    except ValueError:  # detached, or closed meanwhile
        return None
    return raw if usable else None


def _size(buffer: Any, base: Any) -> int:
    """The buffer size ``buffer`` was made with: ``__sizeof__`` is the
    type's basic size plus that (``buffered_sizeof``, 3.9 - 3.14)."""
    size = int(base.__sizeof__(buffer)) - type(buffer).__basicsize__
    return size if size > 0 else io.DEFAULT_BUFFER_SIZE


# -- the free-threaded build: object mutexes ------------------------------------

# On the free-threaded build every object has a mutex of its own, the one the
# critical sections of its methods take (``ob_mutex``, a byte of the object
# header), and the file objects' methods all take it. CPython may hand a
# contended mutex to a waiting thread as it unlocks it: forked at that
# moment, the child has the mutex locked by a thread it does not have, and
# the first use of the file hangs (seen with threads printing at once). In
# the child, where this thread alone runs, a locked mutex of a covered file
# is cleared before the file is used. This thread holds none of them itself
# unless it forked from inside a method of that file (from a raw file
# written in Python, say), which this cannot tell and does not guard against.
_OB_MUTEX: Callable[[object], Any] | None = None


def _object_mutexes() -> Callable[[object], Any] | None:
    """On the free-threaded build, a function giving an object's
    ``ob_mutex`` byte (a ``ctypes`` view), if the object header is laid
    out as in 3.13t - 3.14t (``ob_mutex`` at offset 10, ``ob_type`` at 24);
    otherwise None."""
    if not FREE_THREADED:
        return None
    import ctypes

    probe = io.BytesIO()
    if ctypes.c_void_p.from_address(id(probe) + 24).value != id(type(probe)):
        return None
    byte = ctypes.c_uint8.from_address

    def mutex(obj: object) -> Any:
        return byte(id(obj) + 10)

    return mutex


def _free_mutex(obj: object) -> None:
    if _OB_MUTEX is not None:
        view = _OB_MUTEX(obj)
        if view.value:
            view.value = 0  # unlocked, no waiter: no other thread is here


def _child() -> None:
    fd_raw = _fd_raw_types()
    files = _candidates()
    if _OB_MUTEX is not None:
        for obj, _ in files.values():
            _free_mutex(obj)
            if isinstance(obj, _TEXT):
                with contextlib.suppress(ValueError):  # detached
                    _free_mutex(obj.buffer)
    done: set[int] = set()  # ids of the buffers repaired
    error: BaseException | None = None
    # Text files first: once its buffer is repaired, a text file's pending
    # text would reach the real file at its next flush.
    for obj, tracked in files.values():
        if not isinstance(obj, _TEXT):
            continue
        try:
            buffer = obj.buffer
        except ValueError:  # detached
            continue
        if not isinstance(buffer, _BUFFERED) or id(buffer) in done:
            continue
        raw = _raw(buffer, tracked, fd_raw)
        if raw is None:
            continue
        done.add(id(buffer))
        try:
            _repair_text(obj, buffer, raw)
        except Exception as exc:  # noqa: BLE001  (the others are still repaired)
            error = error or exc
    for obj, tracked in files.values():
        if not isinstance(obj, _BUFFERED) or id(obj) in done:
            continue
        raw = _raw(obj, tracked, fd_raw)
        if raw is None:
            continue
        try:
            base: Any = _RANDOM if isinstance(obj, _RANDOM) else _WRITER
            base.__init__(obj, raw, _size(obj, base))
        except Exception as exc:  # noqa: BLE001  (the others are still repaired)
            error = error or exc
    if error is not None:
        raise error  # reported through sys.unraisablehook, naming this hook


def _repair_text(text: Any, buffer: Any, raw: Any) -> None:
    base = _RANDOM if isinstance(buffer, _RANDOM) else _WRITER
    size = _size(buffer, base)
    if text.write_through:
        # Each write() hands its text to the buffer before it returns:
        # nothing can be pending in the text layer.
        base.__init__(buffer, raw, size)
        return
    # ``raw`` (held here) keeps the real raw file alive meanwhile: the
    # buffer lets go of it.
    sink: Any = io.BytesIO()  # typeshed wants a RawIOBase; any binary file will do
    base.__init__(buffer, sink, _SINK_BUFFER_SIZE)
    try:
        _TEXT.flush(text)
    finally:
        base.__init__(buffer, raw, size)
