"""Registrations, their order, and the snapshot a fork runs.

A registration or unregistration is one dict operation followed by a new
version, a fresh object; the fork-time dispatcher reads the cached
snapshot, an immutable set of tuples, and rebuilds it first when its version
is not the current one. No step needs the GIL to be atomic, and there is no
lock, so nothing can be held across a fork, a child registers at once, and a
weak reference callback run by the garbage collector in the middle of a
registration cannot deadlock:

* a snapshot is tagged with the version read *before* the registrations
  were copied, so a change that the copy missed stores its version after
  that read, and the tag no longer matches; versions are never reused, so a
  stale tag cannot match again;
* a change finished before a fork's prepare phase started has stored its
  version, so that fork either finds it in the cached snapshot or rebuilds.

Each process has registrations of its own (a :class:`_State`). A child
starts with a new one, holding what its fork ran, and never writes to the
parent's: on a free-threaded build, another thread of the parent may have
left a dict of the parent's locked for good in the child (a contended
CPython mutex handed to a thread that the fork left behind).
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from atfork._errors import AtforkWarning
from atfork._refs import Callback, check_callback, refcounts, unreferenced, weak_call

__all__ = ["Hook", "Snapshot", "atfork", "hooks", "registry"]

_PHASES = ("prepare", "parent", "child")


class Snapshot:
    """What one fork runs, fixed when its prepare phase starts.

    Each phase has the callables to call, in call order, and beside them the
    hook each one belongs to (to name it in an error report and to drop a
    hook whose ``prepare`` failed from the ``parent`` and ``child`` phases).
    ``members`` holds every hook, the registrations a child of this fork
    starts with. A plain class with slots, not a named tuple: the interpreter
    reads slots without writing to the code it runs (see
    ``_dispatch._forks``).
    """

    __slots__ = (
        "child",
        "child_hooks",
        "idle",
        "members",
        "parent",
        "parent_hooks",
        "prepare",
        "prepare_hooks",
        "version",
    )

    #: A snapshot stands for a fork that started no nested fork; see
    #: ``_dispatch._Fork``.
    nested = 0

    def __init__(self, ordered: list[Hook], version: object) -> None:
        def phase(index: int) -> tuple[tuple[Callback, ...], tuple[Hook, ...]]:
            pairs = [(h._calls[index], h) for h in ordered]
            return (
                tuple(c for c, _ in pairs if c is not None),
                tuple(h for c, h in pairs if c is not None),
            )

        # Snapshot order is the parent/child order: priority descending, then
        # registration order. Prepare iterates it reversed, so its order is
        # always the exact reverse.
        prepare, prepare_hooks = phase(0)
        self.prepare: tuple[Callback, ...] = prepare[::-1]
        self.prepare_hooks: tuple[Hook, ...] = prepare_hooks[::-1]
        self.parent, self.parent_hooks = phase(1)
        self.child, self.child_hooks = phase(2)
        #: True when no phase has anything to call.
        self.idle = not (self.prepare or self.parent or self.child)
        self.members: dict[Hook, None] = dict.fromkeys(ordered)
        #: The version of the registrations this was built from.
        self.version = version


def _descending_priority(hook: Hook) -> int:
    return -hook._priority


class _State:
    """The registrations of one process.

    ``base`` holds those inherited from the parent (never written: the
    parent built it), ``removed`` those of ``base`` unregistered since, and
    ``added`` those registered in this process, in registration order.
    """

    __slots__ = ("added", "base", "kept", "pid", "removed", "snapshot", "version")

    def __init__(
        self, base: dict[Hook, None], snapshot: Snapshot, pid: int, kept: object = None
    ) -> None:
        self.base = base
        self.removed: dict[int, None] = {}
        self.added: dict[Hook, None] = {}
        # A snapshot of exactly ``base`` stays current: a child that forks
        # again before any change reuses the snapshot its own fork ran.
        self.version = snapshot.version if snapshot.members is base else object()
        self.snapshot = snapshot
        #: The process in which the child callbacks last ran (or atfork was
        #: imported); see ``_dispatch.check()``.
        self.pid = pid
        #: The parent's state, kept alive: releasing it would write to
        #: every hook it holds, a page fault each, which has no place right
        #: after a fork.
        self.kept = kept

    def add(self, hook: Hook) -> None:
        self.added[hook] = None
        self._changed()

    def remove(self, hook: Hook) -> None:
        if self.added.pop(hook, _ABSENT) is _ABSENT:
            base = self.base
            if hook not in base or id(hook) in self.removed:
                return
            # By id, and dropped from a copy of base: the hook can be freed.
            # Two threads doing this at once may each keep the other's hook
            # in base; ``removed`` still says it is gone.
            self.removed[id(hook)] = None
            self.base = {h: None for h in base if h is not hook}
        self._changed()

    def _changed(self) -> None:
        self.version = object()
        # What pins the callbacks of the parent goes with the first change,
        # so that unregistered ones can be freed (see _Registry.forked).
        self.snapshot = _STALE
        self.kept = None

    def __contains__(self, hook: Hook) -> bool:
        return hook in self.added or (hook in self.base and id(hook) not in self.removed)

    def live(self) -> list[Hook]:
        """The registrations now, inherited ones first: sorted by priority
        (stably), that is their parent/child order."""
        removed = self.removed
        base = self.base
        inherited = [h for h in base if id(h) not in removed] if removed else list(base)
        return inherited + list(self.added.copy())

    def members(self) -> dict[Hook, None]:
        """The registrations now, as a child of this process inherits them."""
        snapshot = self.snapshot
        if snapshot.version is self.version:
            return snapshot.members
        return dict.fromkeys(self.live())

    def rebuild(self) -> Snapshot:
        """Build, cache and return the snapshot of the registrations now."""
        version = self.version  # before the copy: see the module docstring
        snapshot = self.snapshot = Snapshot(sorted(self.live(), key=_descending_priority), version)
        return snapshot


_ABSENT = object()
# Stands for no snapshot: its version is no state's.
_STALE = Snapshot([], _ABSENT)


class _Registry:
    """The set of registrations of this process: a :class:`_State`,
    replaced in each child (see :meth:`forked`)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = _State({}, _STALE, 0)

    def add(self, hook: Hook) -> None:
        self.state.add(hook)

    def remove(self, hook: Hook) -> None:
        self.state.remove(hook)

    def __contains__(self, hook: Hook) -> bool:
        return hook in self.state

    def hooks(self) -> tuple[Hook, ...]:
        """The live registrations, in parent/child order."""
        return tuple(sorted(self.state.live(), key=_descending_priority))

    def forked(self, snapshot: Snapshot | None, members: dict[Hook, None] | None, pid: int) -> None:
        """Start the registrations of a new child: ``members``, what was
        registered when its fork's prepare phase (which ran ``snapshot``)
        ended. When no prepare phase ran for this fork, it starts with what
        the parent's state holds. ``pid`` is the process in which the child
        callbacks last ran."""
        state = self.state
        if members is None:
            members = state.members()
            snapshot = state.snapshot
        self.state = _State(members, snapshot or state.snapshot, pid, state)


registry = _Registry()


class Hook:
    """The handle of one registration, returned by :func:`atfork`.

    Unregister it with :meth:`unregister`, or use it as a context manager to
    unregister it when the block ends.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "_calls", "_key", "_name", "_priority", "_refs", "_where")
    __module__ = "atfork"

    _name: str
    _priority: int
    _where: tuple[str, int]
    _key: int
    # What the dispatcher calls in each phase (the callback itself, or for a
    # weak hook a caller that dereferences it first), and the weak references.
    _calls: tuple[Callback | None, Callback | None, Callback | None]
    _refs: tuple[Callable[[], object], ...]

    def __init__(self) -> None:
        raise TypeError("Hook objects are made by atfork.atfork()")

    @property
    def name(self) -> str:
        """The name given at registration, or one derived from the callbacks."""
        return self._name

    @property
    def priority(self) -> int:
        """The priority given at registration."""
        return self._priority

    @property
    def where(self) -> str:
        """Where it was registered: ``file:line`` of the call to :func:`atfork`."""
        return "{}:{}".format(*self._where)

    @property
    def active(self) -> bool:
        """False once unregistered, or once a weak callback's referent died."""
        return self in registry and all(ref() is not None for ref in self._refs)

    def unregister(self) -> None:
        """End the registration; calling it again does nothing.

        A fork whose prepare phase already started still calls this hook's
        ``parent`` or ``child`` callback if its ``prepare`` callback ran.
        """
        registry.remove(self)

    def __enter__(self) -> Hook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unregister()

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        return f"<atfork.Hook {self._name!r} priority={self._priority} {state}>"


def _describe(func: Callback) -> str:
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        return repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def atfork(
    prepare: Callback | None = None,
    parent: Callback | None = None,
    child: Callback | None = None,
    *,
    priority: int = 0,
    weak: bool = False,
    name: str | None = None,
) -> Hook:
    """Register callbacks to run around every fork of this process.

    :param prepare: called in the forking thread before the fork.
    :param parent: called in the parent after the fork.
    :param child: called in the child after the fork, after the standard
        library reinitialised ``threading`` and ``logging``.
    :param priority: a higher priority runs earlier in ``parent`` and
        ``child`` and later in ``prepare``. Equal priorities keep
        ``pthread_atfork`` order: ``prepare`` last-registered-first,
        ``parent`` and ``child`` first-registered-first.
    :param weak: hold the callbacks by weak reference (bound methods through
        :class:`weakref.WeakMethod`); the registration ends by itself when a
        referent dies.
    :param name: how error reports and listings name this hook; by default
        the qualified name of the first callback.
    :returns: a :class:`Hook` to unregister with.
    :raises TypeError: if no callback is given, or one is not callable, or
        can never run when called with no arguments (it needs arguments, or
        it is an async or a generator function, whose call only makes a
        coroutine or a generator), or ``weak=True`` and one cannot be weakly
        referenced.

    Callbacks take no arguments. An exception raised by a callback at fork
    time, :class:`BaseException` included, cannot reach any caller: it is
    reported through :func:`sys.unraisablehook`, naming the hook and the
    phase, and the other callbacks still run. A hook whose ``prepare`` raised
    gets neither its ``parent`` nor its ``child`` call for that fork.

    With ``weak=True``, a callback that nothing but this call refers to (a
    lambda or a :func:`functools.partial` written in the call, the method of
    an object made there) dies as the call returns, and the hook with it:
    :class:`AtforkWarning` says so. The check reads reference counts, and
    stays silent where they cannot tell (see the README).

    .. versionadded:: 0.1
    """
    # Counted first, before this function holds the callbacks anywhere else,
    # as _refs._probe counts them (see _refs.unreferenced).
    counts = refcounts(prepare, parent, child) if weak else None
    funcs = (prepare, parent, child)
    if prepare is None and parent is None and child is None:
        raise TypeError("atfork() needs at least one of prepare, parent and child")
    for phase, func in zip(_PHASES, funcs):
        if func is not None:
            if not callable(func):
                raise TypeError(f"{phase} must be callable, not {type(func).__name__}")
            check_callback(func, phase)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")

    hook = object.__new__(Hook)
    caller = sys._getframe(1)
    hook._where = (caller.f_code.co_filename, caller.f_lineno)
    hook._priority = priority
    hook._name = name if name is not None else _describe(next(f for f in funcs if f is not None))
    if weak:

        def on_death(_: object) -> None:
            registry.remove(hook)

        made = [weak_call(f, on_death) if f is not None else None for f in funcs]
        refs = tuple(m[1] for m in made if m is not None)
        hook._refs = refs
        hook._calls = tuple(  # type: ignore[assignment]
            _all_alive(m[0], refs) if m is not None else None for m in made
        )
        alone = unreferenced(funcs, counts or (), caller)
        if alone is not None:
            warnings.warn(
                AtforkWarning(
                    f"weak=True, and nothing else refers to {alone!r}: the hook "
                    f"{hook._name!r} ends as this call returns, never called; keep "
                    "a reference to the callback, or register it with weak=False"
                ),
                stacklevel=2,
            )
    else:
        hook._refs = ()
        hook._calls = funcs
    registry.add(hook)
    return hook


def hooks() -> tuple[Hook, ...]:
    """The active hooks, in the order their ``parent`` and ``child``
    callbacks run (``prepare`` runs in the reverse order).

    .. versionadded:: 0.1
    """
    return registry.hooks()


def _all_alive(call: Callback, refs: tuple[object, ...]) -> Callback:
    """A weak hook ends when any of its referents dies: each caller checks
    the others too, so a snapshot built just before a death calls nothing."""
    if len(refs) == 1:
        return call
    weak_refs: tuple[Callback, ...] = refs  # type: ignore[assignment]

    def call_if_all_alive() -> None:
        for ref in weak_refs:
            if ref() is None:
                return
        call()

    return call_if_all_alive
