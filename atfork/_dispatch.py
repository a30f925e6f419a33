"""The three callbacks installed once with :func:`os.register_at_fork`.

``os.register_at_fork`` runs ``before`` callbacks last-registered-first and
``after_in_*`` callbacks first-registered-first. The standard library
registers its own (``threading`` and ``logging`` reinitialise their locks in
the child, ``random`` reseeds, ``concurrent.futures.thread`` holds its global
shutdown lock across the fork) when those modules are imported, so this
module imports them before it registers: every atfork ``child`` callback
then runs after the standard library's child reinitialisation, and every
``prepare`` callback before ``logging`` and ``concurrent.futures`` take their
locks (a prepare callback may log, or submit work to a thread pool),
whatever the program's import order.

A fork's state lives in ``_forks`` under the forking thread's id, from the
prepare phase to the parent or child phase: two threads may be in their
prepare phases at once. No phase takes a lock of atfork's; the one lock held
across a fork is CPython's own ``warnings`` lock (3.14+, see ``_install``).
"""

from __future__ import annotations

import _warnings
import concurrent.futures.thread  # noqa: F401  (imported for its at-fork hooks, see above)
import contextlib
import logging  # noqa: F401  (imported for its at-fork hooks, see above)
import os
import random  # noqa: F401  (imported for its at-fork hook, see above)
import sys
import threading  # noqa: F401  (imported for its at-fork hook, see above)
from _thread import get_ident
from operator import length_hint
from os import getpid
from typing import TYPE_CHECKING, Any

from atfork._registry import registry
from atfork._report import report

if TYPE_CHECKING:
    from atfork._refs import Callback
    from atfork._registry import Hook, Snapshot

__all__ = ["check", "fork_origin"]


class _Fork:
    """A fork in progress that a snapshot alone cannot describe: one whose
    prepare phase started nested forks, where a prepare callback failed, or
    during whose prepare phase the registrations changed."""

    __slots__ = ("child", "child_hooks", "members", "nested", "parent", "parent_hooks", "snapshot")

    nested: int
    parent: tuple[Callback, ...]
    parent_hooks: tuple[Hook, ...]
    child: tuple[Callback, ...]
    child_hooks: tuple[Hook, ...]
    #: What a child of this fork starts with (see ``_Registry.forked``).
    members: dict[Hook, None]
    snapshot: Snapshot

    def __init__(
        self,
        fork: Snapshot | _Fork,
        failed: list[Hook] | None = None,
        members: dict[Hook, None] | None = None,
    ) -> None:
        self.nested = fork.nested
        self.parent, self.parent_hooks = _without(fork.parent, fork.parent_hooks, failed)
        self.child, self.child_hooks = _without(fork.child, fork.child_hooks, failed)
        self.members = fork.members if members is None else members
        self.snapshot = fork.snapshot if isinstance(fork, _Fork) else fork


def _without(
    calls: tuple[Callback, ...], hooks: tuple[Hook, ...], failed: list[Hook] | None
) -> tuple[tuple[Callback, ...], tuple[Hook, ...]]:
    if not failed:
        return calls, hooks
    keep = [(c, h) for c, h in zip(calls, hooks) if h not in failed]
    return tuple(c for c, _ in keep), tuple(h for _, h in keep)


# Forks in progress, by thread: the snapshot the fork runs, or a _Fork.
#
# Each fork write-protects every page of the parent, so each page the
# dispatcher writes afterwards (a reference count is a write) costs a page
# fault in each process. The phases therefore touch as few objects as they
# can: the common case stores the snapshot itself, allocating no fork state;
# with nothing registered, each phase reads a few objects and returns.
_forks: dict[int, Snapshot | _Fork] = {}


# The phases below call their callbacks in the same few lines, written out
# in each rather than in a shared function: one call less, and one object
# less to touch, on every fork. One ``try`` around the whole loop keeps it as
# short as CPython's own C loop; after an exception, _resume() reports it and
# goes on with the same iterator.


def _before() -> None:
    if _forks:
        ident = get_ident()
        fork = _forks.get(ident)
        if fork is not None:  # started by a callback of this thread's own prepare phase
            fork = _forks[ident] = _Fork(fork)
            fork.nested += 1
            return
    state = registry.state
    snapshot = state.snapshot
    if snapshot.version is not state.version:
        snapshot = state.rebuild()
    if snapshot.idle:
        return
    ident = get_ident()
    _forks[ident] = snapshot
    calls = iter(snapshot.prepare)
    try:
        for call in calls:
            call()
    except BaseException as exc:  # noqa: BLE001  (nobody can catch it at fork time)
        failed = _resume(snapshot.prepare, snapshot.prepare_hooks, "prepare", calls, exc)
        _forks[ident] = _Fork(_forks[ident], failed)
    if state.version is not snapshot.version:
        # A prepare callback (or another thread) changed the registrations:
        # the child starts with them as they are now.
        _forks[ident] = _Fork(_forks[ident], members=state.members())


def _after_in_parent() -> None:
    if _forks:
        fork = _forks.pop(get_ident(), None)
        if fork is None:
            return
        if fork.nested:
            _forks[get_ident()] = _nested_done(fork)
            return
        calls = iter(fork.parent)
        try:
            for call in calls:
                call()
        except BaseException as exc:  # noqa: BLE001  (nobody can catch it at fork time)
            _resume(fork.parent, fork.parent_hooks, "parent", calls, exc)


def _after_in_child() -> None:
    fork = _forks.pop(get_ident(), None) if _forks else None
    if _forks:  # forks of other threads, cut short: those threads are not here
        _forks.clear()
    if fork is None:
        # No prepare phase ran for this fork: nothing was registered, or a C
        # extension called PyOS_AfterFork_Child() alone (uWSGI does), and
        # check() runs the callbacks.
        registry.forked(None, None, registry.state.pid)
        return
    # The callbacks run in this process (for check()).
    snapshot = fork.snapshot if isinstance(fork, _Fork) else fork
    registry.forked(snapshot, fork.members, getpid())
    if fork.nested:
        _forks[get_ident()] = _nested_done(fork)
        return
    calls = iter(fork.child)
    try:
        for call in calls:
            call()
    except BaseException as exc:  # noqa: BLE001  (nobody can catch it at fork time)
        _resume(fork.child, fork.child_hooks, "child", calls, exc)


def _nested_done(fork: Snapshot | _Fork) -> _Fork:
    assert isinstance(fork, _Fork)
    fork.nested -= 1
    return fork


def _resume(
    calls: tuple[Callback, ...],
    hooks: tuple[Hook, ...],
    phase: str,
    calls_left: Any,
    exc: BaseException,
) -> list[Hook]:
    """Report ``exc``, raised by the call before ``calls_left``, run the
    calls left the same way, and return the hooks whose callback raised. The
    length hint of the iterator gives the index of the call that raised."""
    failed = []
    while True:
        hook = hooks[len(calls) - length_hint(calls_left) - 1]
        report(hook, phase, exc)
        failed.append(hook)
        try:
            for call in calls_left:
                call()
        except BaseException as error:  # noqa: BLE001  (reported at the top of the loop)
            exc = error
            continue
        return failed


def check() -> bool:
    """Run the ``child`` callbacks if this process was forked without
    Python's fork hooks, and return whether it ran them.

    A C extension that calls ``fork()`` itself, or that calls only
    ``PyOS_AfterFork_Child()`` after it (uWSGI does), makes a child in which
    no atfork callback ran. Call this early in such a child (uWSGI's
    ``postfork`` hook, say): it runs the ``child`` callbacks if they have not
    run in this process, and does nothing otherwise, so callbacks never run
    twice in one process
    (when two threads call it at once, one runs them and the other returns
    False at once). ``prepare`` and ``parent`` callbacks cannot run for such
    a fork. Errors are reported as for any fork.

    .. versionadded:: 0.1
    """
    pid = getpid()
    state = registry.state
    if state.pid == pid or _checked.setdefault(pid, get_ident()) != get_ident():
        return False
    _forks.clear()
    registry.forked(None, None, pid)
    snapshot = registry.state.rebuild()
    calls = iter(snapshot.child)
    try:
        for call in calls:
            call()
    except BaseException as exc:  # noqa: BLE001  (reported like a fork's errors)
        _resume(snapshot.child, snapshot.child_hooks, "child", calls, exc)
    return True


# The process ids in which check() ran the child callbacks, to the thread
# that claimed the run (dict.setdefault is atomic).
_checked: dict[int, int] = {}

# Where fork_origin() finds the function that started a fork.
_ORIGINS = (
    (("multiprocessing", "popen_fork.py"), "multiprocessing"),
    (("multiprocessing", "forkserver.py"), "multiprocessing"),
    (("billiard", "popen_fork.py"), "multiprocessing"),
    (("subprocess.py",), "subprocess"),
)


def fork_origin() -> str | None:
    """How the fork whose callback is running started.

    Called from an atfork callback, returns ``"subprocess"`` for a child of
    ``subprocess`` with ``preexec_fn`` (it is about to exec another program,
    so there is little point in repairing it), ``"multiprocessing"`` for
    multiprocessing's (or billiard's) ``fork`` start method and for the
    workers that multiprocessing's forkserver forks, ``"check"``
    when :func:`check` runs the callbacks, and ``"os.fork"`` for any other
    fork (``os.fork()``, ``os.forkpty()``, ``pty.fork()``). Outside a
    callback it returns None. It reads the call stack, so it costs nothing
    unless called.

    .. versionadded:: 0.1
    """
    frame = sys._getframe(1)
    while frame is not None and frame.f_code not in _DISPATCHERS:
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return None
    if frame.f_code is check.__code__:
        return "check"
    caller = frame.f_back
    path = caller.f_code.co_filename.replace(os.sep, "/") if caller is not None else ""
    for parts, origin in _ORIGINS:
        if path.endswith("/" + "/".join(parts)):
            return origin
    return "os.fork"


_DISPATCHERS = frozenset(f.__code__ for f in (_before, _after_in_parent, _after_in_child, check))


# CPython 3.14's warnings lock (see _install); None before 3.14.
_lock_warnings = getattr(_warnings, "_acquire_lock", None)
_unlock_warnings = getattr(_warnings, "_release_lock", None)


def _unlock_warnings_in_child() -> None:
    assert _unlock_warnings is not None
    with contextlib.suppress(RuntimeError):  # not held: no prepare phase ran for this fork
        _unlock_warnings()


def _install() -> None:
    """Register the dispatcher with ``os.register_at_fork``; called once, when
    atfork is imported (the import lock serialises it, and no thread can hold
    a lock of atfork's across a fork while installing).

    Without ``os.register_at_fork`` (a platform without ``fork``) this does
    nothing and registrations are never called.
    """
    registry.state.pid = getpid()
    if not hasattr(os, "register_at_fork"):
        return
    # CPython 3.14 guards the state of ``warnings`` with a lock of its own
    # (Python/_warnings.c) that the child does not reinitialise: a child
    # forked while another thread was in ``warnings.warn()`` or
    # ``catch_warnings()`` hangs at its first warning. It is held across the
    # fork, taken before any prepare callback takes a lock of its own (a
    # thread in ``warn()`` holds it while ``showwarning`` logs, so taking it
    # after the logging locks could deadlock) and given back before every
    # parent and child callback: the releases are registered before the
    # dispatcher, the acquisition after it (``before`` callbacks run
    # last-registered-first). It is recursive: callbacks may warn.
    if _lock_warnings is not None:
        os.register_at_fork(
            after_in_parent=_unlock_warnings, after_in_child=_unlock_warnings_in_child
        )
    os.register_at_fork(
        before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
    )
    if _lock_warnings is not None:
        os.register_at_fork(before=_lock_warnings)


_install()
