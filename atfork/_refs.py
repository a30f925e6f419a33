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
import sys
import types
import weakref
from types import FrameType
from typing import Callable

__all__ = [
    "Callback",
    "check_callback",
    "refcounts",
    "unreferenced",
    "weak_call",
]

Callback = Callable[[], object]

# -- Callbacks that can never run ---------------------------------------------

# The code flags of inspect, which is not imported here: it imports ast,
# dis and tokenize, a third of what ``import atfork`` would import, for
# callbacks that _plainly_callable() cannot tell (it is imported then). The
# values are those of CPython's code objects, the same on every version.
_CO_VARARGS = 0x0004
# Calling a function with one of these flags only makes a generator, a
# coroutine or an async generator: its body never runs (CO_GENERATOR,
# CO_COROUTINE, CO_ITERABLE_COROUTINE, CO_ASYNC_GENERATOR).
_MAKES_AN_OBJECT = 0x0020 | 0x0080 | 0x0100 | 0x0200


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
    if nargs > code.co_argcount and not code.co_flags & _CO_VARARGS:
        return False
    return nargs >= code.co_argcount - len(func.__defaults__ or ())


def _makes_an_object(func: object) -> str | None:
    """What calling ``func`` makes instead of running its body, if it does."""
    import inspect  # only for the callbacks _plainly_callable() cannot tell

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
    import inspect  # imported by _makes_an_object() already

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
        elif _bound_builtin(func):
            ref = _WeakBuiltinMethod(func, on_death)  # type: ignore[arg-type]
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


def _bound_builtin(func: object) -> bool:
    """Whether ``func`` is a method of a built-in type bound to an object
    (``lock.release``), held weakly through that object."""
    return isinstance(func, types.BuiltinMethodType) and not isinstance(
        func.__self__, (types.ModuleType, type(None))
    )


def _owner(func: object) -> object:
    """The object a weakly held ``func`` is bound to, or None."""
    if isinstance(func, types.MethodType) or _bound_builtin(func):
        return func.__self__  # type: ignore[attr-defined]
    return None


class _WeakBuiltinMethod:
    """Like :class:`weakref.WeakMethod`, for methods of built-in types."""

    __slots__ = ("_name", "_self")

    def __init__(self, method: types.BuiltinMethodType, on_death: Callable[[object], None]) -> None:
        self._self = weakref.ref(method.__self__, on_death)
        self._name = method.__name__

    def __call__(self) -> Callback | None:
        obj = self._self()
        return None if obj is None else getattr(obj, self._name)


# -- Weak callbacks nothing else refers to -------------------------------------
#
# A weak hook on a callable that only the call to atfork() refers to (a
# lambda or a partial written in the call, the method of an object made
# there) ends as the call returns. It is found by reference counts, taken by
# refcounts() first thing in atfork(), before it holds the callbacks anywhere
# else, and compared with the counts of the same call made with such a
# callable when this module is imported (_calibrate): what the interpreter
# holds during a call differs between versions (3.11 moves the arguments into
# the callee's frame; 3.14 passes a local variable as a borrowed reference,
# not counted), the comparison does not. Where a local variable's reference
# is borrowed, a count that matches is checked against the caller's locals.
# Nothing is found on the free-threaded build for a function made at module
# or class level, whose count is deferred (only the garbage collector frees
# it), nor for a callable that a call in between holds (a helper's
# argument): a count that is too high only leaves a warning out. One case
# counts too low: up to 3.12, a trace function that reads ``f_locals`` while
# _calibrate runs (a debugger stepping through this import) copies its
# locals, and a later callback kept in a local variable may be warned about.


def refcounts(*funcs: object) -> tuple[tuple[int, int], ...]:
    """The reference counts of each of ``funcs`` and of the object it is
    bound to (0 for none), as :func:`unreferenced` reads them."""
    return tuple(
        (sys.getrefcount(func), 0 if _owner(func) is None else sys.getrefcount(_owner(func)))
        for func in funcs
    )


def _probe(prepare: object = None, parent: object = None, child: object = None) -> tuple[int, int]:
    """The counts :func:`atfork.atfork` would take of its ``child``: the
    same call, made the same way (the first thing atfork() does)."""
    return refcounts(prepare, parent, child)[2]


class _Probe:
    def method(self) -> None:
        pass


def _calibrate() -> tuple[int, int, bool]:
    """The counts of a callable that nothing else refers to, and of the
    object of such a method; and whether a count cannot tell a local
    variable's reference."""
    alone = _probe(child=lambda: None)[0]
    owner_alone = _probe(child=_Probe().method)[1]
    kept = lambda: None  # noqa: E731  (a local variable is what is measured)
    return alone, owner_alone, _probe(child=kept)[0] <= alone


_ALONE, _OWNER_ALONE, _BORROWED = _calibrate()


def unreferenced(
    funcs: tuple[object, ...], counts: tuple[tuple[int, int], ...], caller: FrameType
) -> object:
    """The first of ``funcs`` (given by the function whose caller is
    ``caller``, and counted by :func:`refcounts` there) that nothing else
    refers to, so that a weak reference to it dies at once; or None."""
    for func, (count, owner_count) in zip(funcs, counts):
        if func is None or count > _ALONE:
            continue
        if owner_count > _OWNER_ALONE:  # a method whose object lives on
            continue
        if _BORROWED and any(value is func for value in caller.f_locals.values()):
            continue
        return func
    return None
