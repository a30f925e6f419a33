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
       so does a handler that writes to a file of its own, kept in another
       attribute (``self._f = open(path, "a")``), and the parent's output
       still buffered in such a file is written again by the child;
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
    First, in the child, before every other atfork child callback, every
    buffered file a handler holds in an attribute (``stream`` or any
    other), and every other one found, is repaired in place, whatever
    thread held its lock: the same object gets a free lock and none of the
    parent's buffered output (the parent writes it). This is shared with
    the stdio integration, whose documentation lists what is covered
    ("Buffered files").

    A process with no other thread at the fork (none started by
    ``threading`` or ``_thread``, none foreign that logged) has no lock
    held and no write in progress: for it, the child then only empties
    ``BufferingHandler`` buffers (the parent's records, which the parent
    flushes). Otherwise:

    prepare
        It takes ``logging``'s module lock, then the lock of every handler
        (those that exist at that fork, whenever they were created), each
        without waiting. A lock that is free stays held across the fork, so
        no thread is in the middle of a record. A busy lock is left (the
        standard library makes it again in the child); the fork never waits
        for it, nor for any in-flight log call. If the module lock is busy,
        it takes no handler lock (holding one while the standard library
        waits for the module lock would deadlock with ``logging.config``,
        which takes them in the other order). It notes the ``QueueListener``
        objects whose thread is running (those found running at
        :func:`enable` and those started since: ``QueueListener.start`` is
        wrapped while enabled).
    parent
        It releases what it took.
    child
        The handler locks it took are released (those the standard library
        already reset are left). Every other lock of every handler (a
        ``Lock``, ``RLock`` or ``Condition`` attribute, and those of a
        ``queue.Queue`` attribute), of the listeners' queues and of
        structlog's files is re-created in place (``_at_fork_reinit``,
        which takes no lock), and the conditions forget the parent's waiting
        threads. Handlers keep their streams, repaired in place by then
        (see above). Each listener that was running has its queue emptied
        (the parent handles those records) and its ``QueueHandler`` s hand
        records straight to it: the child's records are handled at once, in
        the logging thread, and none is lost when the child ends with
        ``os._exit``. ``BufferingHandler`` buffers are emptied.

An ``RLock`` held by the forking thread itself stays held in the child, so
that the thread can release it there; a plain ``Lock`` it holds is
re-created (a ``Lock`` records no owner), as the standard library does with
handler locks, and cannot be released in the child. Queues of other kinds
(``multiprocessing``'s) are left as they are.

With ``enable(shared_rotation=True)``, ``RotatingFileHandler`` and
``TimedRotatingFileHandler`` shared by forked processes rotate safely (see
:func:`enable`).

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import weakref
from _thread import _count as _thread_count
from _thread import get_ident
from types import ModuleType
from typing import Any

from atfork.integrations import PRIORITY_LOGGING, _buffers, _rotation
from atfork.integrations._imports import when_imported
from atfork.integrations._toolkit import (
    LOCK_TYPES,
    RLOCK_TYPES,
    ForkStates,
    HookSlot,
    renew_locks,
)

__all__ = ["disable", "enable", "is_enabled"]

# Private names of the standard library used here, stable from 3.9 to 3.13.
_module_lock: Any = vars(logging)["_lock"]
_handler_refs: list[Any] = vars(logging)["_handlerList"]  # weak references to every handler
_threads: dict[int, threading.Thread] = vars(threading)["_active"]


class _Fork:
    """What the prepare phase of one fork found, for its parent and child."""

    __slots__ = ("acquired", "listeners", "module_lock", "threaded")

    def __init__(self, threaded: bool = True) -> None:
        #: Whether other threads existed: without them no lock can be held
        #: and no stream be in the middle of a write.
        self.threaded = threaded
        self.module_lock = False
        #: Handler locks taken in prepare, in the order taken.
        self.acquired: list[Any] = []
        #: QueueListeners whose thread was running.
        self.listeners: list[Any] = []


# The fork of a process with one thread: nothing to record.
_ALONE = _Fork(threaded=False)

# Forks in progress, by forking thread.
_forks: ForkStates[_Fork] = ForkStates()

# Forks done in this process, freed by the next prepare phase. A fork
# write-protects every page of the parent: freeing a fork's state in the
# parent phase would write to the page of each object it refers to, which
# the next prepare phase touches anyway.
_spent: list[_Fork] = []


def _prepare() -> None:
    # Kept short: each page of the parent that this writes to (an object's
    # reference count is a write, and so is running bytecode on 3.11+) is
    # copied at the next fork. Locks other than the handlers' own are dealt
    # with in the child only.
    if _spent:
        _spent.clear()
    if _shared_rotation:  # before the file is shared: rotating handlers created since
        _share_rotation([ref() for ref in tuple(_handler_refs)])
    # Threads started by threading or _thread, and foreign threads that
    # logged (a LogRecord registers them with threading).
    if _thread_count() == 0 and len(_threads) <= 1:
        _forks[get_ident()] = _ALONE
        return

    fork = _Fork()
    handlers: list[Any] = [ref() for ref in tuple(_handler_refs)]  # None: dead
    try:
        fork.module_lock = _module_lock.acquire(False)
        if fork.module_lock:
            acquired = fork.acquired
            for handler in handlers:
                lock: Any = getattr(handler, "lock", None)
                if type(lock) in LOCK_TYPES and lock.acquire(False):
                    acquired.append(lock)
    except BaseException:
        # Neither parent nor child will run for this fork: let go at once.
        _parent_release(fork)
        raise
    _forks[get_ident()] = fork

    if _listeners:
        for ref in tuple(_listeners.values()):
            listener = ref()
            thread = getattr(listener, "_thread", None)  # None once stopped
            if thread is not None and thread.is_alive():
                fork.listeners.append(listener)


def _parent_release(fork: _Fork) -> None:
    for lock in reversed(fork.acquired):
        lock.release()
    if fork.module_lock:
        _module_lock.release()


def _parent() -> None:
    fork = _forks.pop(get_ident(), None)
    if fork is not None and fork.threaded:
        _parent_release(fork)
        _spent.append(fork)


def _child() -> None:
    fork = _forks.take_in_child()
    if fork is None:
        return
    threaded = fork.threaded
    if threaded:
        for lock in fork.acquired:
            # The standard library reset the handlers' locks it knows:
            # release only what is still held. No other thread can take it.
            if lock._is_owned() if type(lock) in RLOCK_TYPES else lock.locked():
                lock.release()
        if fork.module_lock and _module_lock._is_owned():  # reset by the standard library
            _module_lock.release()
    handlers_module = sys.modules.get("logging.handlers")
    if not (threaded or handlers_module is not None):
        return  # nothing to repair: the common case stays cheap

    handlers = [h for h in (ref() for ref in _handler_refs) if h is not None]
    if threaded:
        queue_module = sys.modules.get("queue")
        queue_type = queue_module.Queue if queue_module is not None else None
        for handler in handlers:
            renew_locks(vars(handler).values(), queue_type)
        for listener in fork.listeners:
            renew_locks((listener.queue,), queue_type)
        output = sys.modules.get("structlog._output")
        write_locks = getattr(output, "WRITE_LOCKS", None)
        if write_locks is not None:
            # A dict, or (structlog 26+) a WeakKeyDictionary and its dict.
            renew_locks(getattr(write_locks, "data", write_locks).values())
    if fork.listeners:
        _repair_queues(handlers, fork.listeners)
    if handlers_module is not None:
        buffering = handlers_module.BufferingHandler
        for handler in handlers:
            if isinstance(handler, buffering):
                handler.buffer.clear()  # the parent's records: the parent flushes them


def _repair_queues(handlers: list[logging.Handler], listeners: list[Any]) -> None:
    # Both modules are imported: a QueueListener was running.
    queue: Any = sys.modules["queue"]
    queue_handler = sys.modules["logging.handlers"].QueueHandler
    for listener in listeners:
        pending = listener.queue
        if isinstance(pending, queue.Queue):
            pending.queue.clear()  # its deque (a list for LifoQueue and PriorityQueue)
            pending.unfinished_tasks = 0
        elif isinstance(pending, queue.SimpleQueue):
            while not pending.empty():
                pending.get_nowait()
        else:  # another kind of queue (multiprocessing's): left as it is
            continue
        for handler in handlers:
            if isinstance(handler, queue_handler) and handler.queue is pending:
                vars(handler)["enqueue"] = listener.handle


# -- QueueListeners ----------------------------------------------------------------

# The QueueListeners started while enabled, or running at enable(), by id:
# a weak reference to each. Noted when started rather than looked for among
# the threads at each fork, which would touch every thread object.
_listeners: dict[int, weakref.KeyedRef[int, Any]] = {}
# QueueListener.start as the standard library defines it, while replaced.
_original_start: Any = None


def _forget_listener(ref: weakref.KeyedRef[int, Any]) -> None:
    if _listeners.get(ref.key) is ref:
        _listeners.pop(ref.key, None)


def _note_listener(listener: Any) -> None:
    _listeners[id(listener)] = weakref.KeyedRef(listener, _forget_listener, id(listener))


def _watch_listeners(handlers_module: ModuleType) -> None:
    """Note the running QueueListeners, and replace ``QueueListener.start``
    by a wrapper that notes each listener it starts."""
    global _original_start
    if not _hook.active or _original_start is not None:
        return
    listener_type = handlers_module.QueueListener
    for thread in tuple(_threads.values()):
        listener = getattr(vars(thread).get("_target"), "__self__", None)
        if isinstance(listener, listener_type):
            _note_listener(listener)
    original = _original_start = listener_type.start

    @functools.wraps(original)
    def start(self: Any) -> None:
        original(self)
        _note_listener(self)

    listener_type.start = start


def _unwatch_listeners() -> None:
    global _original_start
    handlers_module = sys.modules.get("logging.handlers")
    if _original_start is not None and handlers_module is not None:
        listener_type = handlers_module.QueueListener
        # Unless something replaced it since.
        if getattr(listener_type.start, "__wrapped__", None) is _original_start:
            listener_type.start = _original_start
    _original_start = None
    _listeners.clear()


_hook = HookSlot()
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
    global _shared_rotation
    if not isinstance(shared_rotation, bool):
        raise TypeError(f"shared_rotation must be a bool, not {type(shared_rotation).__name__}")
    _shared_rotation = shared_rotation
    if shared_rotation:
        _share_rotation(ref() for ref in tuple(_handler_refs))
    else:
        _rotation.unshare()
    if not _hook.active:
        _buffers.start(__name__)
        _hook.register(_prepare, _parent, _child, priority=PRIORITY_LOGGING, name=__name__)
        when_imported("logging.handlers", _watch_listeners)


def disable() -> None:
    """Stop repairing logging in children forked from now on, and end
    shared rotation; calling it again does nothing.

    .. versionadded:: 0.1
    """
    global _shared_rotation
    _shared_rotation = False
    _rotation.unshare()
    _hook.release()
    _unwatch_listeners()
    _buffers.stop(__name__)


def is_enabled() -> bool:
    """True between :func:`enable` and :func:`disable`.

    .. versionadded:: 0.1
    """
    return _hook.active
