"""Fork-safe logging: a child never hangs in a logging call, and no record
is lost or emitted twice.

What breaks after fork without it
    A lock another thread holds at the moment of the fork is copied locked
    into the child, where no thread will ever release it. In the child:

    1. a handler with a lock of its own (a ``Lock``, ``RLock`` or
       ``Condition`` kept as a handler attribute and taken in ``emit``) that
       another thread held hangs the next log call;
    2. a ``StreamHandler`` whose stream's ``BufferedWriter`` was locked (a
       thread blocked writing a record to a full pipe) hangs the next log
       call, although the handler's own lock was reset (CPython gh-84579);
    3. ``QueueHandler`` records are never handled: the ``QueueListener``
       thread does not exist in the child, and the parent's pending records,
       copied into the child's queue, would be handled twice by a restarted
       listener (a ``MemoryHandler``'s buffered records likewise);
    4. structlog's ``PrintLogger``, ``WriteLogger`` and ``BytesLogger`` keep a
       lock per file (``structlog._output.WRITE_LOCKS``): the same hang.

What the standard library does, 3.9 - 3.13
    ``logging`` takes its module lock before a fork and, in the child, resets
    it and the ``lock`` of every handler (``Handler._at_fork_reinit``). It
    does nothing about a handler's other locks, its stream, queues or
    buffers. (Before 3.9 not even the handlers' locks.)

What this module does
    prepare
        It takes ``logging``'s module lock, without waiting; then every lock
        of every handler (the handlers that exist at that fork, whenever
        they were created), of the queues they hold and of structlog's
        files, each without waiting. A lock that is free stays held across
        the fork, so no thread is half way through what it protects. A lock
        that is busy is noted; the fork never waits for it, nor for an
        in-flight log call. If the module lock is busy, it takes nothing and
        treats every lock as busy (holding a handler lock while the
        standard library waits for the module lock could deadlock with
        ``logging.config``, which takes them in the other order).
    parent
        It releases what it took.
    child
        Locks it took are released (those the standard library already
        reset are left), busy ones are re-created in place
        (``_at_fork_reinit``), and the waiters of the parent's threads are
        dropped from conditions. A handler whose locks were busy gets a
        fresh stream on the same file descriptor, as does a handler that
        writes to the standard streams (``print`` in another thread may have
        held their lock); with the stdio integration enabled, handlers that
        wrote to a replaced ``sys.stdout`` or ``sys.stderr`` write to the
        replacement. The stream set aside is never flushed or closed (see
        the stdio integration). Each ``QueueListener`` that was running has
        its queue emptied (the parent handles those records) and its
        ``QueueHandler`` s hand records straight to it: the child's records
        are handled at once, in the logging thread, and none is lost when
        the child ends with ``os._exit``. ``BufferingHandler`` buffers (the
        parent's records) are emptied.

Re-creating a busy ``Lock`` in place means that a thread which forked while
holding a handler's plain ``Lock`` cannot release it in the child (the
standard library does the same with handler locks); an ``RLock`` held by the
forking thread is kept.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import sys
import threading
from _thread import get_ident
from typing import Any

import atfork
from atfork.integrations import PRIORITY_LOGGING, _rotation, _streams

__all__ = ["disable", "enable", "is_enabled"]

# Private names of the standard library used here, stable from 3.9 to 3.13.
_module_lock: Any = vars(logging)["_lock"]
_handler_refs: list[Any] = vars(logging)["_handlerList"]  # weak references to every handler
_threads: dict[int, threading.Thread] = vars(threading)["_active"]

_RLOCK_TYPES = frozenset({type(threading.RLock()), vars(threading)["_PyRLock"]})
_LOCK_TYPES = frozenset({type(threading.Lock()), *_RLOCK_TYPES})


class _Fork:
    """What the prepare phase of one fork found, for its parent and child."""

    __slots__ = (
        "acquired",
        "busy",
        "conditions",
        "handlers",
        "listeners",
        "module_lock",
        "suspects",
    )

    def __init__(self) -> None:
        self.module_lock = False
        #: Locks taken in prepare, in the order taken.
        self.acquired: list[Any] = []
        #: Locks found busy: re-created in the child.
        self.busy: list[Any] = []
        self.conditions: list[threading.Condition] = []
        self.handlers: list[logging.Handler] = []
        #: ids of the streams the child must not use: those of handlers
        #: with a busy lock, and the standard streams.
        self.suspects: set[int] = set()
        self.listeners: list[Any] = []


# Forks in progress, by forking thread: two threads may fork at once.
_forks: dict[int, _Fork] = {}


def _collect(values: Any, found: list[Any], conditions: list[Any], queue_type: Any) -> None:
    """Add the locks and conditions among ``values`` (and in the queues
    among them, one level down) to ``found`` and ``conditions``; a
    condition's lock goes to ``found``."""
    for value in values:
        kind = type(value)
        if kind in _LOCK_TYPES:
            found.append(value)
        elif isinstance(value, threading.Condition):
            conditions.append(value)
            lock = vars(value).get("_lock")
            if type(lock) in _LOCK_TYPES:
                found.append(lock)
        elif queue_type is not None and isinstance(value, queue_type):
            _collect(tuple(vars(value).values()), found, conditions, None)


def _prepare() -> None:
    fork = _Fork()
    if _streams.replaced:  # a previous child's: not for this fork
        _streams.replaced.clear()
    queue_module = sys.modules.get("queue")
    queue_type = queue_module.Queue if queue_module is not None else None
    found: list[Any] = []
    conditions = fork.conditions
    handlers = fork.handlers
    # For each handler, the number of locks found up to and including it.
    ends: list[int] = []
    for ref in tuple(_handler_refs):
        handler = ref()
        if handler is not None:
            handlers.append(handler)
            _collect(tuple(vars(handler).values()), found, conditions, queue_type)
            ends.append(len(found))

    handlers_module = sys.modules.get("logging.handlers")
    if handlers_module is not None:
        listener_type = handlers_module.QueueListener
        for thread in tuple(_threads.values()):
            listener = getattr(vars(thread).get("_target"), "__self__", None)
            if isinstance(listener, listener_type):
                fork.listeners.append(listener)
                _collect((listener.queue,), found, conditions, queue_type)

    if _shared_rotation:  # before the file is shared: rotating handlers created since
        _share_rotation(handlers)

    output = sys.modules.get("structlog._output")
    write_locks = getattr(output, "WRITE_LOCKS", None)
    if write_locks is not None:
        found.extend(write_locks.data.values())

    # A lock may be found more than once (shared by handlers, or a
    # condition's): each is taken once.
    locks = {id(lock): lock for lock in found}
    busy: set[int] = set()
    try:
        fork.module_lock = _module_lock.acquire(False)
        if fork.module_lock:
            acquired = fork.acquired
            for key, lock in locks.items():
                if lock.acquire(False):
                    acquired.append(lock)
                else:
                    busy.add(key)
                    fork.busy.append(lock)
        else:
            busy.update(locks)
            fork.busy.extend(locks.values())
    except BaseException:
        # Neither parent nor child will run for this fork: let go at once.
        _parent_release(fork)
        raise
    _forks[get_ident()] = fork

    suspects = fork.suspects
    suspects.update(map(id, (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)))
    if busy:
        start = 0
        for handler, end in zip(handlers, ends):
            if any(id(lock) in busy for lock in found[start:end]):
                suspects.add(id(vars(handler).get("stream")))
            start = end


def _parent_release(fork: _Fork) -> None:
    for lock in reversed(fork.acquired):
        lock.release()
    if fork.module_lock:
        _module_lock.release()


def _parent() -> None:
    fork = _forks.pop(get_ident(), None)
    if fork is not None:
        _parent_release(fork)


def _child() -> None:
    fork = _forks.pop(get_ident(), None)
    _forks.clear()  # forks of other threads: those threads are not here
    if fork is None:
        return
    for lock in fork.acquired:
        # The standard library resets the handlers' own locks: release only
        # what is still held. No other thread exists to take it meanwhile.
        if lock._is_owned() if type(lock) in _RLOCK_TYPES else lock.locked():
            lock.release()
    for lock in fork.busy:
        lock._at_fork_reinit()
    for condition in fork.conditions:
        vars(condition)["_waiters"].clear()  # threads of the parent
    if fork.module_lock and _module_lock._is_owned():  # reset by the standard library
        _module_lock.release()
    _repair_streams(fork)
    if fork.listeners:
        _repair_queues(fork)
    handlers_module = sys.modules.get("logging.handlers")
    if handlers_module is not None:
        buffering = handlers_module.BufferingHandler
        for handler in fork.handlers:
            if isinstance(handler, buffering):
                handler.buffer.clear()  # the parent's records: the parent flushes them


def _repair_streams(fork: _Fork) -> None:
    replaced = _streams.replaced  # by the stdio integration, in this child
    made: dict[int, Any] = {}
    for handler in fork.handlers:
        attributes = vars(handler)
        stream = attributes.get("stream")
        if stream is None:
            continue
        key = id(stream)
        new = replaced.get(key) or made.get(key)
        if new is None:
            if key not in fork.suspects or not _streams.replaceable(stream):
                continue
            try:
                new = made[key] = _streams.fresh_copy(stream)
            except OSError:  # its descriptor was closed: nothing to write to anyway
                continue
            _streams.keep_forever(stream)
        # Set directly: setStream() would flush the inherited stream.
        attributes["stream"] = new


def _repair_queues(fork: _Fork) -> None:
    # Both modules are imported: a QueueListener was running.
    queue: Any = sys.modules["queue"]
    queue_handler = sys.modules["logging.handlers"].QueueHandler
    for listener in fork.listeners:
        pending = listener.queue
        if isinstance(pending, queue.Queue):
            pending.queue.clear()  # its deque (a list for LifoQueue and PriorityQueue)
            pending.unfinished_tasks = 0
        elif isinstance(pending, queue.SimpleQueue):
            while not pending.empty():
                pending.get_nowait()
        else:  # another kind of queue (multiprocessing's): left as it is
            continue
        for handler in fork.handlers:
            if isinstance(handler, queue_handler) and handler.queue is pending:
                vars(handler)["enqueue"] = listener.handle


_hook: atfork.Hook | None = None
_shared_rotation = False


def _share_rotation(handlers: Any) -> None:
    handlers_module = sys.modules.get("logging.handlers")
    if handlers_module is not None:
        rotating = handlers_module.BaseRotatingHandler
        for handler in handlers:
            if isinstance(handler, rotating):
                _rotation.share(handler)


def enable(*, shared_rotation: bool = False) -> None:
    """Make logging safe in forked children; calling it again with the same
    options does nothing.

    :param shared_rotation: make ``RotatingFileHandler`` and
        ``TimedRotatingFileHandler`` safe to share between forked processes:
        each record is written, and the file rotated, under an inter-process
        lock on ``<log file>.lock``, and a process whose file another one
        rotated reopens it. It applies from enable() on to the rotating
        handlers that exist, and from the next fork on to those created
        later. Off by default: it costs two ``lockf`` calls and two
        ``stat`` calls per record.
    :raises TypeError: an option has the wrong type.

    .. versionadded:: 0.1
    """
    global _hook, _shared_rotation
    if not isinstance(shared_rotation, bool):
        raise TypeError(f"shared_rotation must be a bool, not {type(shared_rotation).__name__}")
    _shared_rotation = shared_rotation
    if shared_rotation:
        _share_rotation(ref() for ref in tuple(_handler_refs))
    else:
        _rotation.unshare()
    if _hook is None:
        _hook = atfork.atfork(_prepare, _parent, _child, priority=PRIORITY_LOGGING, name=__name__)


def disable() -> None:
    """Stop repairing logging in children forked from now on, and end
    shared rotation; calling it again does nothing.

    .. versionadded:: 0.1
    """
    global _hook, _shared_rotation
    _shared_rotation = False
    _rotation.unshare()
    if _hook is not None:
        _hook.unregister()
        _hook = None


def is_enabled() -> bool:
    """True between :func:`enable` and :func:`disable`.

    .. versionadded:: 0.1
    """
    return _hook is not None
