"""What a callback must be, and how a registration holds it: strongly, or
weakly.

A callback is checked once, when it is registered: one that can never run
when called (it needs arguments, or calling it only makes a coroutine or a
generator) is refused then, since at fork time nobody could be told.

A strong callback is called as it is. A weak one is called through a small
closure that dereferences it first; a bound method is held by
:class:`weakref.WeakMethod` (a plain ``weakref.ref`` to a bound method would
die at once, the method object being created on attribute access), and a
method of a built-in type (``lock.release``) by a weak reference to its
object.
"""

from __future__ import annotations

import functools
import inspect
import types
import weakref
from typing import Any, Callable

__all__ = [
    "Callback",
    "check_callback",
    "ref_or_strong",
    "weak_call",
]

Callback = Callable[[], object]

# -- Callbacks that can never run ---------------------------------------------

# Calling a function with one of these flags only makes a generator, a
# coroutine or an async generator: its body never runs.
_MAKES_AN_OBJECT = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)


# The text signatures of built-ins that take no arguments, and None for a
# built-in without one (which inspect cannot read, so accepted).
_BUILTIN_TAKES_NONE = frozenset({None, "()", "($module, /)", "($self, /)", "($module)", "($self)"})


def _class_call(func: object) -> object:
    """What calling ``func`` calls: its class's ``__call__``."""
    return getattr(type(func), "__call__", None)  # noqa: B004  (the method itself is wanted)


def _plainly_callable(func: object, nargs: int) -> bool:
    """True for the usual callbacks that run their body when called with
    ``nargs`` positional arguments: a Python function, bound method or
    callable object, or one in a partial without keywords, read from its
    code object; a built-in that takes no arguments. Well under a
    microsecond, where :func:`inspect.signature` takes 5 to 80 microseconds.
    False means "ask inspect", not "refused".
    """
    if type(func) is functools.partial and not func.keywords:
        nargs += len(func.args)
        func = func.func
    if type(func) is types.BuiltinFunctionType:  # built-in functions and methods
        return nargs == 0 and getattr(func, "__text_signature__", None) in _BUILTIN_TAKES_NONE
    if type(func) is types.MethodType:
        nargs += 1
        func = func.__func__
    elif type(func) is not types.FunctionType and not isinstance(func, type):
        nargs += 1  # a callable object
        func = _class_call(func)
    if type(func) is not types.FunctionType:
        return False
    code = func.__code__
    if code.co_flags & _MAKES_AN_OBJECT or code.co_kwonlyargcount > len(func.__kwdefaults__ or ()):
        return False
    # inspect.markcoroutinefunction (3.12+) marks a function whose result is
    # to be awaited.
    if getattr(func, "_is_coroutine_marker", None) is not None:
        return False
    if nargs > code.co_argcount and not code.co_flags & inspect.CO_VARARGS:
        return False
    return nargs >= code.co_argcount - len(func.__defaults__ or ())


def _makes_an_object(func: object) -> str | None:
    """What calling ``func`` makes instead of running its body, if it does."""
    # A callable object's __call__ counts; for functions, classes and
    # partials it is a slot wrapper, never any of these.
    for candidate in (func, _class_call(func)):
        if inspect.isasyncgenfunction(candidate):
            return "an async generator function: calling it only makes an async generator"
        if inspect.iscoroutinefunction(candidate):
            return "an async function: calling it only makes a coroutine, which nothing awaits"
        if inspect.isgeneratorfunction(candidate):
            return "a generator function: calling it only makes a generator"
    return None


def check_callback(func: Callable[..., object], what: str, nargs: int = 0) -> None:
    """Refuse a callback that can never run when called with ``nargs``
    positional arguments: one that needs other arguments, or an async or
    generator function. A callable without a signature :mod:`inspect` can
    read (some built-ins) is accepted.

    ``func`` is known to be callable; ``what`` names it in the message.

    :raises TypeError: saying why ``func`` can never run.
    """
    if _plainly_callable(func, nargs):
        return
    why = _makes_an_object(func)
    if why is not None:
        raise TypeError(f"{what} must run when called, and {func!r} is {why}")
    try:
        # Not through __wrapped__: a decorator's wrapper may take other
        # arguments than the function it wraps.
        signature = inspect.signature(func, follow_wrapped=False)
    except (TypeError, ValueError):  # no signature to read: accepted
        return
    try:
        signature.bind(*(None,) * nargs)
    except TypeError as exc:
        arguments = {0: "no arguments", 1: "one argument"}.get(nargs, f"{nargs} arguments")
        raise TypeError(
            f"{what} is called with {arguments}, and {func!r} cannot be: {exc}"
        ) from None


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
