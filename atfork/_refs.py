"""How a registration holds its callbacks: strongly, or weakly.

A strong callback is called as it is. A weak one is called through a small
closure that dereferences it first; a bound method is held by
:class:`weakref.WeakMethod` (a plain ``weakref.ref`` to a bound method would
die at once, the method object being created on attribute access), and a
method of a built-in type (``lock.release``) by a weak reference to its
object.
"""

from __future__ import annotations

import types
import weakref
from typing import Any, Callable

__all__ = ["Callback", "ref_or_strong", "weak_call"]

Callback = Callable[[], object]


def weak_call(
    func: Callback, on_death: Callable[[object], None]
) -> tuple[Callback, Callable[[], Callback | None]]:
    """Return ``(call, ref)``: a caller that does nothing once ``func`` died,
    and the weak reference itself. ``on_death`` runs when ``func`` dies.

    :raises TypeError: if ``func`` cannot be weakly referenced.
    """
    ref: Callable[[], Callback | None]
    try:
        if isinstance(func, types.MethodType):
            ref = weakref.WeakMethod(func, on_death)
        elif isinstance(func, types.BuiltinMethodType) and not isinstance(
            func.__self__, (types.ModuleType, type(None))
        ):
            ref = _WeakBuiltinMethod(func, on_death)
        else:
            ref = weakref.ref(func, on_death)
    except TypeError:
        raise TypeError(
            f"weak=True needs callbacks that support weak references, and "
            f"{func!r} does not; register it with weak=False"
        ) from None

    def call() -> None:
        live = ref()
        if live is not None:
            live()

    return call, ref


class _WeakBuiltinMethod:
    """Like :class:`weakref.WeakMethod`, for methods of built-in types."""

    __slots__ = ("_name", "_self")

    def __init__(self, method: types.BuiltinMethodType, on_death: Callable[[object], None]) -> None:
        self._self = weakref.ref(method.__self__, on_death)
        self._name = method.__name__

    def __call__(self) -> Callback | None:
        obj = self._self()
        return None if obj is None else getattr(obj, self._name)


def ref_or_strong(obj: object, callback: Callable[[Any], object]) -> Callable[[], Any]:
    """A weak reference to ``obj`` that calls ``callback`` when it dies, or,
    for an object that cannot be weakly referenced (numpy generators,
    sqlite3 connections), a strong one, dereferenced the same way."""
    try:
        return weakref.ref(obj, callback)
    except TypeError:
        return _Strong(obj)


class _Strong:
    __slots__ = ("_obj",)

    def __init__(self, obj: object) -> None:
        self._obj = obj

    def __call__(self) -> object:
        return self._obj
