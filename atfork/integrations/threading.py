"""Locks, semaphores, queues, executors, imports and event loops across fork.

What breaks after fork without it
=================================

Only the forking thread exists in the child. Whatever another thread was
doing at that instant stays frozen, half done, in the child's copy of
memory (bpo-6721, open since 2009):

* A :class:`threading.Lock` or :class:`~threading.RLock` another thread held
  is locked for ever: the child's first ``acquire()`` hangs. The same holds
  for the lock inside a :class:`~threading.Condition`, an
  :class:`~threading.Event`, a :class:`queue.Queue`, a
  :class:`~threading.Semaphore`. Acquiring every lock before the fork (the
  python-atfork recipe, and CPython 3.7.0's logging) makes fork wait, and
  deadlocks on lock order (reverted in CPython, bpo-36533).
* Semaphore permits held by other threads are never returned: a
  ``Semaphore(1)`` a worker held is empty for ever in the child.
* ``Condition.notify()`` (and so ``Queue.put()``) wakes the first
  registered waiter: a thread of the parent, absent in the child, so the
  child's own waiting thread sleeps on.
* A :class:`concurrent.futures.ThreadPoolExecutor` used before the fork
  counts the parent's idle workers in its idle semaphore (3.8+): the
  child's ``submit()`` believes a worker is idle, starts none, and the work
  never runs. If it may start one, the child's new worker first runs the
  work queued in the parent, a second time. A thread of the parent in
  ``submit()`` or ``shutdown()`` leaves the executor's lock held.
* A :class:`multiprocessing.Queue` already used has a feeder thread: after a
  plain :func:`os.fork` the child's queue still believes it has one, so
  ``put()`` buffers the item and nothing ever sends it. Its repair,
  ``Queue._after_fork``, runs only in multiprocessing's own children.
* A module another thread was importing keeps its per-module import lock
  (``importlib._bootstrap._ModuleLock``) owned by that thread, and stays
  half executed in :data:`sys.modules`: the child's ``import`` of it hangs.
* An asyncio selector event loop shares its epoll set (a kernel object)
  with the parent (bpo-21998): a child that closes its copy of the loop
  unregisters the parent's self-pipe from the parent's epoll set, and the
  parent's ``call_soon_threadsafe()`` no longer wakes its loop; both
  processes read the same self-pipe, and on 3.9 - 3.11 the child's signals
  are written to the parent's loop.

What the standard library already does (3.9 - 3.13)
===================================================

* :mod:`threading` re-initialises its own internal locks in the child and
  marks the other threads' :class:`~threading.Thread` objects stopped; it
  never touches user locks. Lock, RLock, Condition and Event have a private
  ``_at_fork_reinit()`` from 3.9 on (bpo-40089), which the standard library
  uses for its own locks.
* The global import lock is re-initialised in the child; the per-module
  locks are not.
* :mod:`concurrent.futures` re-initialises its module-wide shutdown lock
  (bpo-45021; 3.9.8+) but not an executor's state; from 3.14 it also
  empties ``_threads_queues``, its registry of worker threads, so executors
  cannot be found from it in the child.
* A :class:`~concurrent.futures.ProcessPoolExecutor`'s worker processes and
  executor manager thread are the parent's: in a child of a plain
  :func:`os.fork` its ``submit()`` never completes. That cannot be repaired
  short of a new pool, and is left alone: the child makes its own.
* :mod:`multiprocessing` repairs its objects only in its own children.
* asyncio, from 3.12 on (gh-66285), forgets the running loop and the
  policy's loop in the child and clears the signal wake-up fd; an inherited
  loop object still shares its epoll set and self-pipe with the parent.

What this module does
=====================

:func:`track` makes the objects it is given fork-safe; :func:`enable`
covers, without tracking, what can be found at fork time. Both register one
:func:`atfork.atfork` hook at :data:`~atfork.integrations.PRIORITY_THREADING`.

prepare
    For each tracked object's lock, one non-blocking ``acquire(False)``,
    never a wait. A free lock is acquired and held across the fork, so that
    no thread can be half way through the state it protects; an RLock the
    forking thread owns is acquired once more the same way, and keeps its
    owner and count. A lock another thread holds is noted, to be
    re-initialised in the child. A plain Lock records no owner: one that is
    held while no other thread is alive is the forking thread's own, and is
    left as it is. With ``enable(warn=True)`` prepare also notes the other
    threads alive.
parent
    Releases the locks prepare acquired; with ``warn=True`` emits
    :class:`ForkWithThreadsWarning` if other threads were alive.
child
    Releases the locks prepare acquired and re-initialises
    (``_at_fork_reinit()``) the locks other threads held, and marks those
    objects reset (see :func:`was_reset` and ``track(on_reset=...)``).
    Forgets the waiters of conditions (their threads are gone), returns the
    semaphore permits of other threads, gives executors an empty work queue
    and no threads (a worker that forked stays the child's worker, on its
    emptied queue). With :func:`enable`: does the same for each used
    ThreadPoolExecutor, tracked or not (re-initialising its lock if it is
    held and the forking thread is in none of its methods); drops the
    import locks of the other threads and the modules they were half way
    through importing,
    re-arms used multiprocessing queues, and gives each inherited asyncio
    loop its own selector and self-pipe.

The private CPython names relied upon are read from the standard library's
sources of 3.9 to 3.13, where they are unchanged: ``_at_fork_reinit()`` of
Lock and RLock; the attributes ``Condition._lock`` and ``_waiters``,
``Semaphore._cond`` and ``_value``, ``BoundedSemaphore._initial_value``,
``Event._cond``, ``Queue.mutex``, ``not_empty``, ``not_full`` and
``all_tasks_done``, ``ThreadPoolExecutor._shutdown_lock``, ``_work_queue``,
``_idle_semaphore`` and ``_threads`` (unchanged in 3.14);
``threading._active``;
``importlib._bootstrap._module_locks`` and ``_blocking_on`` and the
``owner``, ``lock``, ``wakeup`` and ``waiters`` of a ``_ModuleLock``;
``multiprocessing.util._afterfork_registry`` and ``Queue._after_fork``;
``BaseSelectorEventLoop._selector``, ``_csock``, ``_thread_id``,
``_close_self_pipe()`` and ``_make_self_pipe()``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import gc
import sys
import threading
import types
import warnings
import weakref
from _thread import get_ident
from types import ModuleType
from typing import Any, Callable, TypeVar

import atfork
from atfork.integrations import (
    PRIORITY_THREADING,
    _event_loops,
    _executors,
    _import_locks,
    _mp_queues,
)
from atfork.integrations._imports import when_imported
from atfork.integrations._toolkit import ForkStates, HookSlot, Versioned, check_callback
from atfork.integrations._tracked_kinds import (
    Kind,
    count_permits,
    kind_of,
    repair_semaphore,
    stop_counting,
)

__all__ = [
    "ForkWithThreadsWarning",
    "disable",
    "enable",
    "is_enabled",
    "track",
    "untrack",
    "was_reset",
]

T = TypeVar("T")


class ForkWithThreadsWarning(atfork.AtforkWarning):
    """A process forked while other threads were alive.

    Emitted in the parent, after the fork, when :func:`enable` was given
    ``warn=True``. The message names the other threads and the tracked
    objects one of them held, which the child re-initialised.

    .. versionadded:: 0.1
    """

    __module__ = "atfork.integrations.threading"


# -- The tracked objects ----------------------------------------------------


class _Entry:
    """One tracked object, held by weak reference."""

    __slots__ = ("__weakref__", "hook", "kind", "on_reset", "ref", "reset_in")

    ref: weakref.ref[Any]
    kind: Kind
    #: The ``on_reset`` callback (or a weak reference to a bound method).
    on_reset: Callable[[], Callable[[Any], object] | None] | None
    #: Its own atfork hook, which calls ``on_reset`` in the child.
    hook: atfork.Hook | None
    #: The process generation (see ``_generation``) in which the child phase
    #: reset this object; -1 if never.
    reset_in: int


# Tracked objects by id(). A mutation is one dict operation followed by
# _changed(); the prepare phase reads _current(), a copy made once per
# change, with no lock (see _toolkit.Versioned).
_tracked_objects: Versioned[int, _Entry, _Entry] = Versioned(dict.values)
_entries = _tracked_objects.entries
_changed = _tracked_objects.changed
_current = _tracked_objects.copy

#: How many forks made this process: 0 in the original process, one more in
#: each child. An object reset by the child phase records the value, and
#: ``was_reset()`` compares: a grandchild does not inherit the answer.
_generation = 0


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    """Weak reference callback: the object died."""
    entry = _entries.get(key)
    if entry is not None and entry.ref is ref:
        del _entries[key]
        _changed()
        if entry.hook is not None:
            entry.hook.unregister()


def _tracked(obj: object) -> _Entry | None:
    entry = _entries.get(id(obj))
    return entry if entry is not None and entry.ref() is obj else None


def _hold_on_reset(func: Callable[[T], object]) -> Callable[[], Callable[[T], object] | None]:
    # A bound method is held weakly: ``track(self._lock, on_reset=self.clear)``
    # must not keep ``self`` (and so the lock) alive for ever.
    if isinstance(func, types.MethodType):
        return weakref.WeakMethod(func)
    return lambda: func


def _notify(entry: _Entry) -> None:
    """Child callback of an object with ``on_reset``."""
    if entry.reset_in != _generation or entry.on_reset is None:
        return
    obj = entry.ref()
    func = entry.on_reset()
    if obj is not None and func is not None:
        func(obj)


def track(obj: T, *, on_reset: Callable[[T], object] | None = None) -> T:
    """Make ``obj`` fork-safe, and return it.

    ``obj`` is a :class:`threading.Lock`, :class:`~threading.RLock`,
    :class:`~threading.Condition` (over a Lock or an RLock),
    :class:`~threading.Semaphore`, :class:`~threading.BoundedSemaphore`,
    :class:`~threading.Event`, :class:`queue.Queue` (or a subclass) or
    :class:`concurrent.futures.ThreadPoolExecutor` (or a subclass). It is
    held by weak reference: tracking ends when it dies. Every supported type
    can be weakly referenced, so nothing needs releasing by hand;
    :func:`untrack` ends the tracking earlier.

    At each fork its lock is tried without waiting. If the forking thread
    owns it, it is left as it is (an RLock keeps its owner and count). If it
    is free, it is held across the fork and released in both processes. If
    another thread holds it, the child re-initialises it, calls
    ``on_reset(obj)`` and :func:`was_reset` turns True there: the state the
    lock protects may be half updated. A plain Lock records no owner: held
    while other threads are alive, it counts as held by another thread (see
    the README); use an RLock for a lock a thread may hold while it forks.

    A semaphore's class is replaced by a subclass of the same name that
    counts the permits each thread holds (``isinstance`` is unchanged): in
    the child the permits of the other threads are returned, those of the
    forking thread stay held. Permits taken before ``track()`` have no known
    holder and are never returned.

    :param obj: the object to track; tracking it again only replaces its
        ``on_reset`` callback, if one is given.
    :param on_reset: called in the child as ``on_reset(obj)`` when the fork
        found ``obj`` held by another thread (or its permits held by other
        threads) and reset it. It runs right after this integration's child
        repairs, before other integrations' and user ``child`` callbacks:
        discard half-updated state there, do not log or print. An exception
        is reported through :func:`sys.unraisablehook`. A bound method is
        held weakly, any other callable strongly (so it must not refer to
        ``obj``, or ``obj`` never dies).
    :returns: ``obj``.
    :raises TypeError: ``obj`` is of another type, or ``on_reset`` is not
        callable, or cannot run when called as ``on_reset(obj)`` (it takes
        no argument or needs more, or it is an async or a generator
        function).

    .. versionadded:: 0.1
    """
    if on_reset is not None:
        if not callable(on_reset):
            raise TypeError(f"on_reset must be callable, not {type(on_reset).__name__}")
        check_callback(on_reset, "on_reset", 1)
    entry = _tracked(obj)
    if entry is None:
        kind = kind_of(obj)
        key = id(obj)
        entry = object.__new__(_Entry)
        entry.kind = kind
        entry.on_reset = None
        entry.hook = None
        entry.reset_in = -1
        entry.ref = weakref.ref(obj, functools.partial(_forget, key))
        if kind.repair is repair_semaphore:
            count_permits(obj)
        _entries[key] = entry
        _changed()
        _ensure_hook()
    if on_reset is not None:
        entry.on_reset = _hold_on_reset(on_reset)
        if entry.hook is None or not entry.hook.active:
            # Registered after the main hook, at the same priority: in the
            # child it runs right after the repairs.
            entry.hook = atfork.atfork(
                child=functools.partial(_notify, entry),
                priority=PRIORITY_THREADING,
                name=f"on_reset of {type(obj).__name__} at {id(obj):#x}",
            )
    return obj


def untrack(obj: object) -> None:
    """End the tracking of ``obj``; an object not tracked is ignored.

    A semaphore gets its own class back.

    .. versionadded:: 0.1
    """
    entry = _tracked(obj)
    if entry is None:
        return
    _entries.pop(id(obj), None)
    _changed()
    if entry.hook is not None:
        entry.hook.unregister()
    if entry.kind.repair is repair_semaphore:
        stop_counting(obj)
    _release_hook()


def was_reset(obj: object) -> bool:
    """True in a child whose fork found tracked ``obj`` held by another
    thread and re-initialised it (the state it protects may be half
    updated); False everywhere else, and in that child's own children unless
    their fork reset it again.

    .. versionadded:: 0.1
    """
    entry = _tracked(obj)
    return entry is not None and entry.reset_in == _generation


# -- enable() ---------------------------------------------------------------

_enabled = False
_warn = False
_hook = HookSlot()


# What enable() watches: (module, class, where its instances are recorded).
# The module is never imported here: its class is watched once the program
# imports it.
_WATCHED: tuple[tuple[str, str, weakref.WeakSet[Any]], ...] = (
    ("asyncio.selector_events", "BaseSelectorEventLoop", _event_loops.found),
    ("concurrent.futures.thread", "ThreadPoolExecutor", _executors.found),
)


def _ensure_hook() -> None:
    _hook.register(
        _prepare, _parent, _child, priority=PRIORITY_THREADING, name="atfork.integrations.threading"
    )


def _release_hook() -> None:
    if not _enabled and not _entries:
        _hook.release()
        if _entries:  # track() ran meanwhile in another thread
            _ensure_hook()


def _watch(class_name: str, found: weakref.WeakSet[Any], module: ModuleType) -> None:
    """Record in ``found`` every instance of ``module.class_name`` (or of a
    subclass) made from now on."""
    if not _enabled:
        return
    cls = getattr(module, class_name)
    original = cls.__init__
    if getattr(original, "_atfork_original", None) is not None:
        return  # already watching

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        found.add(self)

    __init__._atfork_original = original  # type: ignore[attr-defined]
    cls.__init__ = __init__


def _scan(classes: list[tuple[type, weakref.WeakSet[Any]]]) -> None:
    """Record the instances of ``classes`` that exist already: once, at
    ``enable()``, in one pass over the objects the collector tracks, rather
    than at each fork."""
    types_ = tuple(cls for cls, _ in classes)
    wanted: dict[type, bool] = {}
    for obj in gc.get_objects():
        # By the type alone: isinstance() asks a proxy's __class__, and a
        # dead weakref.proxy raises ReferenceError there.
        kind = type(obj)
        found_kind = wanted.get(kind)
        if found_kind is None:
            found_kind = wanted[kind] = issubclass(kind, types_)
        if found_kind:
            for cls, found in classes:
                if issubclass(kind, cls):
                    found.add(obj)


def _unwatch() -> None:
    for module_name, class_name, found in _WATCHED:
        found.clear()
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if cls is None:
            continue
        original = getattr(cls.__dict__.get("__init__"), "_atfork_original", None)
        if original is not None:
            cls.__init__ = original


def enable(*, warn: bool = False) -> None:
    """Cover, at every fork, what needs no tracking.

    In the child: module imports other threads were in the middle of are
    undone (their import locks dropped, their half-executed modules removed
    from :data:`sys.modules`, so the child imports them afresh); each
    :class:`multiprocessing.Queue` whose feeder thread had started is reset
    as multiprocessing resets it in its own children, so ``put()`` works
    after a plain :func:`os.fork`; each asyncio selector event loop not
    closed, and not running in another thread, gets its own selector and
    self-pipe, so closing or running it in the child leaves the parent's
    loop alone; each :class:`concurrent.futures.ThreadPoolExecutor` used in
    the parent gets an empty work queue, no threads and a free lock, so its
    ``submit()`` works and the work queued in the parent runs only there.
    Loops and executors are found by wrapping
    ``BaseSelectorEventLoop.__init__`` and ``ThreadPoolExecutor.__init__``
    when their modules are imported, and once, at ``enable()``, among the
    existing objects (one pass over :func:`gc.get_objects`, if either
    module is imported by then). The prepare phase does nothing for them.

    Tracked objects (:func:`track`) are handled whether or not the
    integration is enabled. Calling ``enable()`` again sets the options
    anew.

    :param warn: at each fork made while other threads are alive, emit a
        :class:`ForkWithThreadsWarning` in the parent naming them, and the
        tracked objects they held.
    :raises TypeError: ``warn`` is not a bool.

    .. versionadded:: 0.1
    """
    global _enabled, _warn
    if not isinstance(warn, bool):
        raise TypeError(f"warn must be a bool, not {type(warn).__name__}")
    _warn = warn
    if not _enabled:
        _enabled = True
        existing: list[tuple[type, weakref.WeakSet[Any]]] = []
        for module_name, class_name, found in _WATCHED:
            module = sys.modules.get(module_name)
            if module is not None:
                existing.append((getattr(module, class_name), found))
            when_imported(module_name, functools.partial(_watch, class_name, found))
        if existing:
            _scan(existing)
    _ensure_hook()


def disable() -> None:
    """Undo :func:`enable`; tracked objects stay tracked. Calling it again
    does nothing.

    .. versionadded:: 0.1
    """
    global _enabled, _warn
    if _enabled:
        _enabled = _warn = False
        _unwatch()
    _release_hook()


def is_enabled() -> bool:
    """Whether :func:`enable` is in effect.

    .. versionadded:: 0.1
    """
    return _enabled


# -- prepare ----------------------------------------------------------------


class _Fork:
    """What prepare found, for the parent and child phases of one fork."""

    __slots__ = ("busy", "held", "repairs", "threads")

    def __init__(self) -> None:
        #: Locks prepare acquired: released in both processes.
        self.held: list[Any] = []
        #: ``(entry, obj, lock)`` whose lock another thread held.
        self.busy: list[tuple[_Entry, Any, Any]] = []
        #: ``(entry, obj)`` with something else for the child to repair.
        self.repairs: list[tuple[_Entry, Any]] = []
        #: The other threads alive, with ``warn=True``.
        self.threads: list[threading.Thread] = []


# The fork of enable() alone, nothing tracked: prepare records nothing in it.
_NOTHING = _Fork()

# Forks in progress, by forking thread.
_forks: ForkStates[_Fork] = ForkStates()


def _held_by(lock: Any, held: list[Any]) -> bool:
    return any(lock is other for other in held)


def _prepare() -> None:
    entries = _current()
    if not entries and not _enabled:
        return
    me = get_ident()
    if me in _forks:
        # Registered twice (two threads made the first track() at once):
        # this fork is handled already, and the locks it holds are its own.
        return
    if not entries and not _warn:
        _forks[me] = _NOTHING  # nothing to record, nothing to allocate
        return
    fork = _Fork()
    held = fork.held
    alone: bool | None = None
    try:
        for entry in entries:
            obj = entry.ref()
            if obj is None:
                continue
            kind = entry.kind
            lock = obj if kind.lock_of is None else kind.lock_of(obj)
            if lock.acquire(False):
                # Free, or an RLock the forking thread owns: acquired once
                # more and released after the fork, it keeps owner and count.
                held.append(lock)
            elif kind.reentrant:
                fork.busy.append((entry, obj, lock))  # owned by another thread
            elif not _held_by(lock, held):  # (a lock tracked twice is ours already)
                # A plain lock has no owner. With no other thread alive it
                # can only be the forking thread's (or a dead thread's, and
                # then the child sees it as the parent does).
                if alone is None:
                    alone = len(sys._current_frames()) < 2
                if not alone:
                    fork.busy.append((entry, obj, lock))
            if kind.repair is not None:
                fork.repairs.append((entry, obj))
        if _warn:
            active: dict[int, threading.Thread] = getattr(threading, "_active", {})
            fork.threads = [t for t in active.copy().values() if t.ident != me]
    except BaseException:
        # A failed prepare gets no parent or child call: give the locks back.
        for lock in held:
            lock.release()
        raise
    _forks[me] = fork


# -- parent -----------------------------------------------------------------


def _parent() -> None:
    fork = _forks.pop(get_ident(), None)
    if fork is None:
        return
    for lock in fork.held:
        lock.release()
    if fork.threads:
        _warn_threads(fork)


def _warn_threads(fork: _Fork) -> None:
    names = ", ".join(repr(thread.name) for thread in fork.threads)
    message = f"fork with {len(fork.threads)} other thread(s) alive: {names}"
    if fork.busy:
        objects = ", ".join(repr(obj) for _, obj, _ in fork.busy)
        message += f"; tracked objects held by another thread, reset in the child: {objects}"
    # The warning points at the os.fork() call: this function, _parent, the
    # atfork dispatcher, then the caller.
    warnings.warn(ForkWithThreadsWarning(message), stacklevel=4)


# -- child ------------------------------------------------------------------


def _child() -> None:
    global _generation
    fork = _forks.take_in_child()
    if fork is None:
        return
    me = get_ident()
    _generation += 1
    error: BaseException | None = None
    for lock in fork.held:
        lock.release()
    # Prepare found these held by another thread: re-created without the
    # ownership test of _toolkit.renew_locks, which prepare's acquire(False)
    # made already.
    for entry, _, lock in fork.busy:
        try:
            lock._at_fork_reinit()
            entry.reset_in = _generation
        except BaseException as exc:  # noqa: BLE001  (raised once all is repaired)
            error = error or exc
    for entry, obj in fork.repairs:
        try:
            if entry.kind.repair(obj, me):  # type: ignore[misc]
                entry.reset_in = _generation
        except BaseException as exc:  # noqa: BLE001  (raised once all is repaired)
            error = error or exc
    if _enabled:
        for repair in _EXTRAS:
            try:
                repair(me)
            except BaseException as exc:  # noqa: BLE001  (raised once all is repaired)
                error = error or exc
    if error is not None:
        raise error  # reported by atfork through sys.unraisablehook


def _repair_found_executors(me: int) -> None:
    _executors.repair(me, _tracked)


# What the child repairs with enable(), besides the tracked objects.
_EXTRAS: tuple[Callable[[int], None], ...] = (
    _import_locks.repair,
    _mp_queues.repair,
    _event_loops.repair,
    _repair_found_executors,
)
