"""prometheus_client's multiprocess mode: a child forked while another
thread updated a metric does not hang on its own first update.

What breaks after fork without it
    With ``PROMETHEUS_MULTIPROC_DIR`` set when prometheus_client is
    imported, every metric value of a process is a ``MmapedValue`` of the
    class that ``prometheus_client.values.MultiProcessValue()`` makes, and
    all of them share one ``threading.Lock``, a variable of that call's
    closure, held by ``inc()``, ``set()``, ``get()`` (so ``observe()`` and
    every other update) and by the making of a value. A child forked while
    another thread of the parent held it inherits it held by a thread that
    does not exist in the child: the child's first metric update waits
    forever (prometheus/client_python issue 431; measured with the current
    release, see the tests). A gunicorn ``--preload`` master or a Celery
    parent whose threads count anything forks such children.

What prometheus_client and the standard library already do
    prometheus_client handles the rest of a fork itself: every update first
    compares ``os.getpid()`` with the process the files were opened in, and
    a child closes its copies of the parent's mmap'd files and opens its
    own (``*_<pid>.db``), starting its values from zero, so the parent's
    numbers are neither lost nor counted twice. The lock is not part of it:
    it is taken before that check. The standard library does nothing for a
    lock of a library's (CPython 3.9 - 3.14 alike).

What this module does
    prepare, parent: nothing.

    child: looks up ``prometheus_client.values`` in ``sys.modules`` (never
    importing it); for its current ``ValueClass``, and every value class
    that ``MultiProcessValue()`` made after :func:`enable` (a program may
    make its own, with another process identifier), when the shared lock is
    held, a new lock takes its place in the closure, for every value of
    that class at once; unless the forking thread itself holds it (the fork
    was made from inside a metric update, by a signal handler or a garbage
    collector callback, as one of its frames shows): that update finishes
    in the child when the fork returns, and releases the lock, while a new
    lock would let another update run in the middle of it. A free lock is
    left as it is. The per-pid files are left to prometheus_client. The
    work is a non-blocking acquire per value class, and no lock is taken
    that could wait.

Limits
    Only the shared lock of ``values.py`` is repaired. A metric with labels
    also has a lock of its own (``self._lock`` of the metric, taken by
    ``labels()``, ``remove()`` and ``clear()``), as do ``Info`` and ``Enum``
    metrics: :func:`atfork.integrations.threading.track` repairs those. In
    the default single-process mode there is no shared lock (each value has
    its own ``Lock``), and values are not per process.

.. versionadded:: 0.1
"""

from __future__ import annotations

import sys
import threading
import types
import weakref
from typing import Any, Callable

import atfork
from atfork.integrations import PRIORITY_PROMETHEUS
from atfork.integrations._imports import when_imported

__all__ = ["disable", "enable", "is_enabled"]

_VALUES = "prometheus_client.values"
# The closure variable that holds the shared lock, in values.py.
_LOCK_NAME = "lock"

_hook: atfork.Hook | None = None
# Value classes MultiProcessValue() made since enable(), by weak reference:
# a tuple replaced whole, which the child reads without a lock.
_made: tuple[weakref.ref[type], ...] = ()
_made_lock = threading.Lock()
_wrapped: list[tuple[types.ModuleType, Callable[..., type]]] = []


# -- child --------------------------------------------------------------------------


def _lock_cell(cls: type) -> tuple[Any, frozenset[types.CodeType]] | None:
    """The closure cell holding the shared lock of value class ``cls``, and
    the code of every method that takes it; None for a class without one
    (single-process mode, or a release that keeps it elsewhere)."""
    if not getattr(cls, "_multiprocess", False):
        return None
    cell = None
    codes = set()
    for attribute in vars(cls).values():
        func = getattr(attribute, "__func__", attribute)  # a classmethod's function
        code = getattr(func, "__code__", None)
        if code is None or _LOCK_NAME not in code.co_freevars:
            continue
        codes.add(code)
        cell = func.__closure__[code.co_freevars.index(_LOCK_NAME)]
    return (cell, frozenset(codes)) if cell is not None else None


def _forking_thread_holds(codes: frozenset[types.CodeType]) -> bool:
    """Whether this thread (the child's only one) is inside a method that
    holds the lock: the lock's holder then is the thread that forked."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _child() -> None:
    values = sys.modules.get(_VALUES)
    if values is None:
        return
    classes = [getattr(values, "ValueClass", None)]
    classes += [cls for cls in (ref() for ref in _made) if cls not in classes]
    for cls in classes:
        found = _lock_cell(cls) if isinstance(cls, type) else None
        if found is not None:
            _repair(*found)


def _repair(cell: Any, codes: frozenset[types.CodeType]) -> None:
    """Put a new lock in ``cell`` if the one there is held by a thread that
    the fork left behind."""
    lock = cell.cell_contents
    reentrant = hasattr(lock, "_is_owned")  # an RLock knows its owner
    if reentrant and lock._is_owned():
        return
    if lock.acquire(blocking=False):  # free
        lock.release()
        return
    if not reentrant and _forking_thread_holds(codes):
        return
    cell.cell_contents = threading.RLock() if reentrant else threading.Lock()


# -- enable: record the value classes made from now on -----------------------------


def _recording(make: Callable[..., type]) -> Callable[..., type]:
    def MultiProcessValue(*args: Any, **kwargs: Any) -> type:
        global _made
        cls = make(*args, **kwargs)
        with _made_lock:
            _made = (*(ref for ref in _made if ref() is not None), weakref.ref(cls))
        return cls

    MultiProcessValue.__wrapped__ = make  # type: ignore[attr-defined]
    MultiProcessValue.__doc__ = make.__doc__
    return MultiProcessValue


def _on_import(module: types.ModuleType) -> None:
    if _hook is None or _wrapped:
        return
    make = getattr(module, "MultiProcessValue", None)
    if callable(make):
        module.MultiProcessValue = _recording(make)  # type: ignore[attr-defined]
        _wrapped.append((module, make))


# -- public API ---------------------------------------------------------------------


def enable() -> None:
    """Repair prometheus_client's multiprocess-mode lock in every forked
    child.

    Idempotent. Nothing is imported: prometheus_client is looked up at fork
    time, and covered whether the program imports it before or after this
    call.

    .. versionadded:: 0.1
    """
    global _hook
    if _hook is not None:
        return
    _hook = atfork.atfork(
        child=_child, priority=PRIORITY_PROMETHEUS, name="atfork.integrations.prometheus"
    )
    when_imported(_VALUES, _on_import)


def disable() -> None:
    """Undo :func:`enable`: no repair in later children, and
    ``MultiProcessValue`` is prometheus_client's own again. Idempotent.

    .. versionadded:: 0.1
    """
    global _hook
    if _hook is not None:
        _hook.unregister()
        _hook = None
    while _wrapped:
        module, make = _wrapped.pop()
        module.MultiProcessValue = make  # type: ignore[attr-defined]


def is_enabled() -> bool:
    """Whether :func:`enable` is in effect.

    .. versionadded:: 0.1
    """
    return _hook is not None
