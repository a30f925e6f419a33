"""sentry-sdk: a forked child sends only its own events, and exits without
waiting for its parent's.

What breaks after fork without it
    sentry-sdk's transport sends every envelope (an event, a batch of logs)
    through a ``sentry_sdk.worker.BackgroundWorker``: a queue, a lock and a
    thread. The worker notices a fork (its thread is for another pid) and
    starts a new thread in the child, but on the queue and the lock it
    inherited. Events the parent had queued and not yet sent at the fork
    (the endpoint was slow, or a burst came) are in the child's copy of the
    queue: the child's new thread sends them again, once per child. The
    queue also counts the envelope the parent's thread was sending at the
    fork as unfinished, and no thread finishes it in the child: the child's
    flush at exit waits its whole ``shutdown_timeout`` for it. A fork while
    another thread of the parent flushes (``flush()`` holds the worker's
    lock while it waits) leaves that lock held in the child for good: the
    child's first event, which starts its thread under that lock, hangs.
    Measured with sentry-sdk 2.75, see the tests; getsentry/sentry-python
    issue 6149 fixed the same for the batchers, not for this worker.

What sentry-sdk and the standard library already do
    sentry-sdk re-makes the state of its log, metric and span batchers in
    the child (``os.register_at_fork``, since issue 6149) and starts the worker's thread anew by
    pid; not the worker's queue or lock. The standard library does nothing
    for a library's queue or lock (CPython 3.9 - 3.14 alike).

What this module does
    prepare, parent, child: nothing at fork time. :func:`enable` makes the
    queue and the lock of every ``BackgroundWorker`` (made before it or
    after) objects of one process, with :func:`atfork.per_process`: the
    child's first use of its worker makes it a new, empty queue and a new
    lock, and the parent's copies are left as they are in the child's
    memory (never sent, never released). The parent goes on with its own
    queue and sends its backlog once. ``sentry_sdk.worker`` is looked up
    when it is imported, never imported by this module.

Limits
    Only the thread worker: the ``AsyncWorker`` of sentry-sdk's async
    transport keeps its queue with its event loop, which a forked child
    does not run.

.. versionadded:: 0.1
"""

from __future__ import annotations

import threading
import types
from typing import Any

import atfork
from atfork.integrations._imports import when_imported

__all__ = ["disable", "enable", "is_enabled"]

_WORKER = "sentry_sdk.worker"

_enabled = False
# (class, attribute, what the class had) for each attribute made per process.
_replaced: list[tuple[type, str, object]] = []


class _PerProcessAttribute:
    """An instance attribute whose value belongs to one process: the
    process that set it reads what it set; a forked child reads an object
    of its own, made by ``make(parent_value)`` on its first read."""

    def __init__(self, name: str, make: Any) -> None:
        self.name = name
        self.slot = f"_atfork_{name.strip('_')}"
        self.make = make

    def _local(self, value: Any) -> atfork.ProcessLocal[Any]:
        """A per-process value that is ``value`` in this process."""
        made = [value]
        make = self.make
        local = atfork.per_process(lambda: made.pop() if made else make(value))
        local.get()  # this process's value is the one given
        made.clear()
        return local

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        state = instance.__dict__
        local = state.get(self.slot)
        if local is None:  # an instance made before enable(): its own value
            local = state[self.slot] = self._local(state[self.name])
        value = local.get()
        # Kept in the instance too, where it is read once disable() removed
        # this descriptor.
        state[self.name] = value
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__[self.slot] = self._local(value)
        instance.__dict__[self.name] = value


def _new_queue(inherited: Any) -> Any:
    return type(inherited)(inherited.maxsize)


def _new_lock(inherited: Any) -> Any:
    return threading.Lock()


def _on_import(module: types.ModuleType) -> None:
    if not _enabled or _replaced:
        return
    worker = getattr(module, "BackgroundWorker", None)
    if not isinstance(worker, type):
        return
    for name, make in (("_queue", _new_queue), ("_lock", _new_lock)):
        _replaced.append((worker, name, worker.__dict__.get(name, _MISSING)))
        setattr(worker, name, _PerProcessAttribute(name, make))


_MISSING = object()


def enable() -> None:
    """Give each forked child a queue and a lock of its own in sentry-sdk's
    background worker.

    Idempotent. Nothing is imported: ``sentry_sdk.worker`` is changed when
    the program imports it, before or after this call.

    .. versionadded:: 0.1
    """
    global _enabled
    if _enabled:
        return
    _enabled = True
    when_imported(_WORKER, _on_import)


def disable() -> None:
    """Undo :func:`enable`: the workers read their queue and lock as
    sentry-sdk stores them (each worker keeps the ones of the process it is
    in now). Idempotent.

    .. versionadded:: 0.1
    """
    global _enabled
    _enabled = False
    while _replaced:
        cls, name, before = _replaced.pop()
        if before is _MISSING:
            delattr(cls, name)
        else:
            setattr(cls, name, before)


def is_enabled() -> bool:
    """Whether :func:`enable` is in effect.

    .. versionadded:: 0.1
    """
    return _enabled
