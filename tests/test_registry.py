"""Registration, handles, order, weak hooks and snapshots (atfork._registry)."""

from __future__ import annotations

import functools
import gc
import os
import sys
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Callable

import pytest
from free_threading import FREE_THREADED

import atfork
from atfork._registry import registry
from atfork.testing import run_in_child, run_python


def noop() -> None:
    pass


class Log:
    """Records ``(tag, phase)`` for each callback, in the order they ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def hook(
        self, tag: str, *, priority: int = 0, phases: str = "prepare parent child"
    ) -> atfork.Hook:
        made = {p: self._recorder(tag, p) for p in phases.split()}
        return atfork.atfork(
            made.get("prepare"), made.get("parent"), made.get("child"), priority=priority, name=tag
        )

    def _recorder(self, tag: str, phase: str) -> Callable[[], None]:
        return lambda: self.calls.append((tag, phase))

    def phase(self, phase: str) -> list[str]:
        return [tag for tag, p in self.calls if p == phase]


def fork_and_collect(log: Log) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Fork once; return the parent's and the child's calls of that fork."""
    del log.calls[:]
    child_calls = run_in_child(lambda: list(log.calls))
    return list(log.calls), child_calls


# -- validation --------------------------------------------------------------


def test_no_callback_is_a_type_error() -> None:
    """Registering no callback at all raises TypeError at once."""
    with pytest.raises(TypeError, match="at least one"):
        atfork.atfork()


@pytest.mark.parametrize("phase", ["prepare", "parent", "child"])
def test_non_callable_is_a_type_error(phase: str) -> None:
    """A non-callable callback raises TypeError naming the phase, at registration."""
    with pytest.raises(TypeError, match=f"{phase} must be callable, not int"):
        atfork.atfork(**{phase: 42})  # type: ignore[arg-type]


@pytest.mark.parametrize("priority", [1.5, "1", None, True])
def test_priority_must_be_an_int(priority: object) -> None:
    """A priority that is not an int raises TypeError."""
    with pytest.raises(TypeError, match="priority must be an int"):
        atfork.atfork(child=noop, priority=priority)  # type: ignore[arg-type]


def test_name_must_be_a_str() -> None:
    """A name that is not a str raises TypeError."""
    with pytest.raises(TypeError, match="name must be a str"):
        atfork.atfork(child=noop, name=3)  # type: ignore[arg-type]


class NoWeakRefs:
    __slots__ = ()

    def __call__(self) -> None:
        pass


def test_weak_needs_weakly_referenceable_callbacks() -> None:
    """weak=True with a callable that has no weak references raises TypeError."""
    with pytest.raises(TypeError, match="weak references"):
        atfork.atfork(child=NoWeakRefs(), weak=True)


def needs_an_argument(conn: object) -> None:
    pass


def takes_two(a: object, b: object) -> None:
    pass


async def async_callback() -> None:
    pass


def generator_callback() -> Iterator[None]:
    yield


async def async_generator_callback() -> AsyncIterator[None]:
    yield


class NeedsArgument:
    def __init__(self, conn: object) -> None:
        pass

    def method(self, conn: object) -> None:
        pass


class AsyncCall:
    async def __call__(self) -> None:
        pass


NEVER_WORK = {
    "a function needing an argument": (needs_an_argument, "missing a required argument: 'conn'"),
    "a partial still needing one": (functools.partial(takes_two, 1), "missing.*'b'"),
    "a bound method needing one": (NeedsArgument(None).method, "'conn'"),
    "a class needing one": (NeedsArgument, "'conn'"),
    "a builtin needing one": (len, "missing"),
    "a lambda with a keyword-only argument": (lambda *, key: None, "'key'"),
    "an async function": (async_callback, "async function"),
    "an async partial": (functools.partial(async_callback), "async function"),
    "an async __call__": (AsyncCall(), "async function"),
    "a generator function": (generator_callback, "generator function"),
    "an async generator function": (async_generator_callback, "async generator function"),
}


@pytest.mark.parametrize(("func", "why"), NEVER_WORK.values(), ids=NEVER_WORK)
@pytest.mark.parametrize("phase", ["prepare", "child"])
def test_a_callback_that_can_never_run_is_a_type_error(
    phase: str, func: Callable[[], object], why: str
) -> None:
    """A callback that fails or does nothing whenever it is called with no
    arguments raises TypeError at registration, naming the phase and why."""
    with pytest.raises(TypeError, match=f"^{phase} .*{why}"):
        atfork.atfork(**{phase: func})  # type: ignore[arg-type]


def test_the_code_flags_read_are_those_of_inspect() -> None:
    """The code flags atfork reads without importing inspect are inspect's."""
    import inspect

    from atfork import _refs

    makes_an_object = (
        inspect.CO_GENERATOR
        | inspect.CO_COROUTINE
        | inspect.CO_ITERABLE_COROUTINE
        | inspect.CO_ASYNC_GENERATOR
    )
    assert (inspect.CO_VARARGS, makes_an_object) == (_refs._CO_VARARGS, _refs._MAKES_AN_OBJECT)


def with_defaults(a: int = 1, *args: object, key: int = 2, **kwargs: object) -> None:
    pass


class Callbacks:
    def __init__(self, conn: object = None) -> None:
        pass

    def method(self) -> None:
        pass

    def __call__(self, extra: int = 0) -> None:
        pass


ACCEPTED = {
    "defaults, *args and **kwargs": with_defaults,
    "a partial giving the arguments": functools.partial(takes_two, 1, 2),
    "a partial giving them by keyword": functools.partial(takes_two, a=1, b=2),
    "a bound method": Callbacks().method,
    "a class": Callbacks,
    "an instance with __call__": Callbacks(),
    "a builtin without a signature": dict,
    "a builtin method": threading.Lock().locked,
    "a builtin function": os.getpid,
}


@pytest.mark.parametrize("func", ACCEPTED.values(), ids=ACCEPTED)
def test_a_callback_callable_with_no_arguments_is_accepted(func: Callable[[], object]) -> None:
    """Whatever can be called with no arguments registers, whatever its kind."""
    with atfork.atfork(child=func) as hook:
        assert hook.active


def test_failed_registration_registers_nothing() -> None:
    """A registration that raised leaves no hook behind."""
    log = Log()
    with pytest.raises(TypeError):
        atfork.atfork(child=lambda: log.calls.append(("x", "child")), parent=1)  # type: ignore[arg-type]
    assert [] == fork_and_collect(log)[1]


def test_hooks_cannot_be_made_directly() -> None:
    """Hook objects come from atfork.atfork() only."""
    with pytest.raises(TypeError, match=r"atfork\.atfork"):
        atfork.Hook()


# -- the handle --------------------------------------------------------------


def test_unregister_is_idempotent_and_stops_calls() -> None:
    """After unregister() (called twice) the hook is inactive and never called."""
    log = Log()
    hook = log.hook("a")
    assert hook.active
    hook.unregister()
    hook.unregister()
    assert not hook.active
    assert ([], []) == fork_and_collect(log)


def test_unregister_in_a_child_releases_the_callbacks() -> None:
    """A child keeps what its fork ran only until the registry changes:
    unregistering there lets the callback be collected, as in the parent."""

    class Callback:
        def __call__(self) -> None:
            pass

    callback = Callback()
    hooks = [atfork.atfork(callback, callback, callback)]
    ref = weakref.ref(callback)
    del callback

    def in_child() -> bool:
        hooks.pop().unregister()
        gc.collect()
        return ref() is None

    assert run_in_child(in_child)
    assert ref() is not None  # the parent's registration still holds it
    hooks.pop().unregister()
    gc.collect()
    assert ref() is None


def test_hook_is_a_context_manager() -> None:
    """A hook used in a with block is called inside it and unregistered after."""
    log = Log()
    with log.hook("a") as hook:
        assert hook.active
        parent, child = fork_and_collect(log)
        assert [("a", "prepare"), ("a", "parent")] == parent
        assert [("a", "prepare"), ("a", "child")] == child
    assert not hook.active
    assert ([], []) == fork_and_collect(log)


def test_name_priority_and_repr() -> None:
    """The handle shows its name, priority and state; the default name is the callback's."""
    hook = atfork.atfork(child=noop, priority=3)
    assert f"{__name__}.noop" == hook.name
    assert 3 == hook.priority
    assert f"<atfork.Hook '{__name__}.noop' priority=3 active>" == repr(hook)
    hook.unregister()
    assert repr(hook).endswith("inactive>")


def test_where_is_the_registering_line() -> None:
    """A hook knows the file and line of the atfork() call that made it."""
    line = sys._getframe().f_lineno + 1
    hook = atfork.atfork(child=noop)
    assert f"{__file__}:{line}" == hook.where


def test_hooks_lists_active_hooks_in_parent_child_order() -> None:
    """atfork.hooks() gives the active hooks, priority first, then registration order."""
    before = atfork.hooks()
    low = atfork.atfork(child=noop, priority=-1)
    first = atfork.atfork(child=noop)
    high = atfork.atfork(child=noop, priority=1)
    second = atfork.atfork(child=noop)
    gone = atfork.atfork(child=noop)
    gone.unregister()
    mine = [hook for hook in atfork.hooks() if hook not in before]
    assert [high, first, second, low] == mine


def test_same_callable_twice_is_two_registrations() -> None:
    """Registering one function twice calls it twice; each handle ends its own."""
    calls: list[int] = []

    def child() -> None:
        calls.append(1)

    first = atfork.atfork(child=child)
    atfork.atfork(child=child)
    assert 2 == run_in_child(lambda: len(calls))
    first.unregister()
    assert 1 == run_in_child(lambda: len(calls))


# -- order -------------------------------------------------------------------


def test_posix_order_for_equal_priorities() -> None:
    """prepare runs last-registered-first; parent and child first-registered-first."""
    log = Log()
    for tag in "abc":
        log.hook(tag)
    parent, child = fork_and_collect(log)
    assert ["c", "b", "a"] == [t for t, p in parent if p == "prepare"]
    assert ["a", "b", "c"] == [t for t, p in parent if p == "parent"]
    assert ["a", "b", "c"] == [t for t, p in child if p == "child"]


def test_priority_runs_earlier_after_fork_and_later_before() -> None:
    """A higher priority runs earlier in parent/child and later in prepare."""
    log = Log()
    log.hook("low", priority=-5)
    log.hook("mid")
    log.hook("high", priority=10)
    log.hook("mid2")
    parent, child = fork_and_collect(log)
    expected = ["high", "mid", "mid2", "low"]
    assert expected == [t for t, p in parent if p == "parent"]
    assert expected == [t for t, p in child if p == "child"]
    assert expected[::-1] == [t for t, p in parent if p == "prepare"]


def test_prepare_order_is_the_reverse_of_child_order_with_partial_hooks() -> None:
    """Hooks that lack some phases keep one consistent order across phases."""
    log = Log()
    log.hook("a", phases="child")
    log.hook("b", phases="prepare parent child", priority=1)
    log.hook("c", phases="prepare child")
    log.hook("d", phases="prepare parent", priority=1)
    parent, child = fork_and_collect(log)
    assert ["c", "d", "b"] == [t for t, p in parent if p == "prepare"]
    assert ["b", "d"] == [t for t, p in parent if p == "parent"]
    assert ["b", "a", "c"] == [t for t, p in child if p == "child"]


# -- weak hooks --------------------------------------------------------------


class Owner:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def child(self) -> None:
        self.calls.append("child")

    def prepare(self) -> None:
        self.calls.append("prepare")


def test_weak_bound_method_lives_while_its_owner_does() -> None:
    """A weak hook on a bound method runs while the owner lives (WeakMethod)."""
    calls: list[str] = []
    owner = Owner(calls)
    hook = atfork.atfork(child=owner.child, weak=True)
    assert hook.active
    assert ["child"] == run_in_child(lambda: list(calls))
    del owner


def test_weak_hook_ends_when_its_owner_dies() -> None:
    """When the owner is collected the hook turns inactive and is never called."""
    calls: list[str] = []
    owner = Owner(calls)
    hook = atfork.atfork(prepare=owner.prepare, child=owner.child, weak=True)
    del owner
    gc.collect()
    assert not hook.active
    assert [] == run_in_child(lambda: list(calls))
    assert [] == calls


def test_weak_function_ends_when_collected() -> None:
    """A weak hook on a plain function ends when the function is collected."""
    calls: list[str] = []

    def make() -> Callable[[], None]:
        return lambda: calls.append("child")

    func = make()
    hook = atfork.atfork(child=func, weak=True)
    assert ["child"] == run_in_child(lambda: list(calls))
    del func
    gc.collect()
    assert not hook.active
    assert [] == run_in_child(lambda: list(calls))


def test_weak_hook_ends_when_any_referent_dies() -> None:
    """A weak hook with two owners ends when one dies; the other's callback is not called."""
    calls: list[str] = []
    keep, lose = Owner(calls), Owner(calls)
    hook = atfork.atfork(prepare=keep.prepare, child=lose.child, weak=True)
    # Build the snapshot while both live, so the stale snapshot is what runs.
    run_in_child(noop)
    del calls[:]
    del lose
    gc.collect()
    assert not hook.active
    assert [] == run_in_child(lambda: list(calls))
    assert [] == calls
    del keep


def test_weak_builtin_method_follows_its_object() -> None:
    """A weak hook on a built-in type's method lives as long as its object."""
    locks = [threading.Lock()]
    locks[0].acquire()
    hook = atfork.atfork(child=locks[0].release, weak=True)
    assert hook.active
    assert run_in_child(lambda: not locks[0].locked())
    del locks[0]
    gc.collect()
    assert not hook.active


# Each registers inline a callable that nothing else refers to.
WEAK_ALONE: dict[str, Callable[[], atfork.Hook]] = {
    "a lambda": lambda: atfork.atfork(child=lambda: None, weak=True),
    "a partial": lambda: atfork.atfork(child=functools.partial(noop), weak=True),
    "a new object's method": lambda: atfork.atfork(child=Owner([]).child, weak=True),
    "a new lock's method": lambda: atfork.atfork(prepare=threading.Lock().locked, weak=True),
    "a new callable object": lambda: atfork.atfork(parent=Callbacks(), weak=True),
}


@pytest.mark.parametrize("register", WEAK_ALONE.values(), ids=WEAK_ALONE)
def test_weak_hook_on_a_callable_nothing_else_refers_to_warns(
    register: Callable[[], atfork.Hook],
) -> None:
    """weak=True with a callable that dies as the call returns warns, pointing at the call."""
    with pytest.warns(atfork.AtforkWarning, match="nothing else refers to") as record:
        hook = register()
    assert [__file__] == [warning.filename for warning in record]
    assert not hook.active


def test_weak_hook_on_a_callable_kept_elsewhere_does_not_warn() -> None:
    """weak=True with a callable that outlives the call (in a local, a global,
    a list, a helper's argument, or the method of an object kept) warns nothing."""
    kept = lambda: None  # noqa: E731  (a local is the case under test)
    owner = Owner([])
    method = Owner([]).child  # the method object keeps its owner alive
    listed = [functools.partial(noop)]

    def via_a_helper(func: Callable[[], None]) -> atfork.Hook:
        return atfork.atfork(child=func, weak=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hooks = [
            atfork.atfork(child=kept, weak=True),
            atfork.atfork(prepare=kept, child=kept, weak=True),
            atfork.atfork(child=noop, weak=True),
            atfork.atfork(child=owner.child, weak=True),
            atfork.atfork(child=method, weak=True),
            atfork.atfork(child=listed[0], weak=True),
            via_a_helper(kept),
        ]
    assert all(hook.active for hook in hooks)


MODULE_LEVEL = """import warnings, atfork
warnings.simplefilter("error")
kept = lambda: None
atfork.atfork(child=kept, weak=True)
try:
    atfork.atfork(child=lambda: None, weak=True)
except atfork.AtforkWarning:
    print("warned")
"""


def test_weak_hook_registered_at_module_level() -> None:
    """At module level an inline lambda warns and a global one does not; on the
    free-threaded build neither does, a module-level function being freed by
    the garbage collector only (its reference count tells nothing)."""
    run = run_python(MODULE_LEVEL)
    assert (0, "" if FREE_THREADED else "warned\n") == (run.returncode, run.stdout)


def test_strong_is_the_default() -> None:
    """A closure registered without weak=True keeps working after its maker is gone."""
    calls: list[str] = []

    def register() -> None:
        atfork.atfork(child=lambda: calls.append("child"))

    register()
    gc.collect()
    assert ["child"] == run_in_child(lambda: list(calls))


# -- snapshots ---------------------------------------------------------------


def test_registration_during_prepare_waits_for_the_next_fork() -> None:
    """A hook registered by a prepare callback gets no calls of that fork, all of the next."""
    log = Log()
    late: list[atfork.Hook] = []

    def register_late() -> None:
        if not late:
            late.append(log.hook("late"))

    atfork.atfork(prepare=register_late)
    parent, child = fork_and_collect(log)
    assert ([], []) == (parent, child)
    parent, child = fork_and_collect(log)
    assert [("late", "prepare"), ("late", "parent")] == parent
    assert [("late", "prepare"), ("late", "child")] == child


def test_unregistered_during_prepare_still_gets_parent_and_child() -> None:
    """A hook whose prepare ran is called after the fork even if unregistered meanwhile."""
    log = Log()
    victim = log.hook("victim")
    atfork.atfork(prepare=victim.unregister, priority=1)  # its prepare runs after victim's
    parent, child = fork_and_collect(log)
    assert not victim.active
    assert [("victim", "prepare"), ("victim", "parent")] == parent
    assert [("victim", "prepare"), ("victim", "child")] == child
    assert ([], []) == fork_and_collect(log)


def test_unregistered_before_its_prepare_runs_is_still_called() -> None:
    """The set a fork runs is fixed when its prepare phase starts."""
    log = Log()
    victim = log.hook("victim", priority=1)  # its prepare runs after the unregistering one
    atfork.atfork(prepare=victim.unregister)
    parent, child = fork_and_collect(log)
    assert [("victim", "prepare"), ("victim", "parent")] == parent
    assert [("victim", "prepare"), ("victim", "child")] == child


def test_child_can_register_and_fork_at_once() -> None:
    """In the child a registration works immediately and applies to the child's own forks."""

    def in_child() -> list[str]:
        calls: list[str] = []
        atfork.atfork(child=lambda: calls.append("grandchild"))
        return run_in_child(lambda: list(calls))

    assert ["grandchild"] == run_in_child(in_child)


def test_parent_registry_unchanged_by_child_registrations() -> None:
    """What a child registers does not appear in the parent."""
    before = registry.hooks()
    assert run_in_child(lambda: atfork.atfork(child=noop).active)
    assert before == registry.hooks()
