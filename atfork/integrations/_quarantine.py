"""Cutting a child off from the sockets it inherited: the tools the db and
http integrations share.

A quarantined descriptor is replaced by ``/dev/null`` with ``dup2``
(:class:`Neutraliser`): the descriptor number stays valid in the child, so
whatever the library does with it later (send, receive, shutdown, close,
garbage collection, exit) acts on ``/dev/null`` and never on the parent's
connection, while the parent's copy is untouched.

A :class:`Registry` maps ``id(obj)`` to an entry: a (weak, where the type
allows) reference to a connection, pool or client, and the function that
quarantines it in a child. Registration is a dict assignment, atomic under
the GIL, so it takes no lock and is safe from any thread. The child pass
reads a copy of the dict; it runs alone (the child has one thread). Each
integration has a registry and a :class:`Patches` of its own, so that
disabling one leaves the other's alone, and the http and django integrations
a :class:`ChildPass` each: the hook that runs the child pass.
"""

from __future__ import annotations

import functools
import os
import weakref
from typing import Any, Callable, TypeVar

from atfork.integrations._toolkit import (
    FREE_THREADED,
    HookSlot,
    Versioned,
    keep_forever,
    prepare_keep_forever,
    ref_or_strong,
)

__all__ = [
    "FREE_THREADED",
    "ChildPass",
    "Neutraliser",
    "Patches",
    "Quarantine",
    "Registry",
    "keep_forever",
    "per_type",
    "prepare_keep_forever",
    "registering_init",
]


class Neutraliser:
    """Replaces a descriptor by ``/dev/null``, opened once per child pass.

    After ``dup2`` the descriptor number still exists, so the library's own
    close, shutdown or finaliser later acts on ``/dev/null``: a send or a
    shutdown fails (ENOTSOCK) and nothing reaches the parent's connection,
    while the parent's copy of the socket is untouched.
    """

    __slots__ = ("_null",)

    def __init__(self) -> None:
        self._null = -1

    def __call__(self, fd: int) -> None:
        if fd < 0:  # closed socket objects report -1
            return
        if self._null < 0:
            self._null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        os.dup2(self._null, fd, inheritable=False)

    def close(self) -> None:
        if self._null >= 0:
            os.close(self._null)
            self._null = -1


#: ``quarantine(obj, neutralise)``: called in the child for each live entry.
Quarantine = Callable[[Any, Neutraliser], None]

R = TypeVar("R")


class _Entry:
    __slots__ = ("alive", "auto", "get", "keep", "quarantine")

    def __init__(
        self,
        get: Callable[[], object],
        quarantine: Quarantine,
        auto: bool,
        keep: bool,
        alive: Callable[[Any], bool] | None,
    ) -> None:
        self.get = get
        self.quarantine = quarantine
        #: Registered by enable()'s discovery (dropped by disable()), not by track().
        self.auto = auto
        #: Stays registered in the child (pools, engines, clients, connections
        #: a pool reuses); a dead connection's entry is dropped once it is
        #: quarantined.
        self.keep = keep
        #: For strongly held objects: False once the object is closed.
        self.alive = alive


class Registry(Versioned[int, _Entry, tuple[int, _Entry]]):
    """The objects one integration quarantines in each child: every change
    of ``entries`` makes a new version, and take() copies the entries once
    per version."""

    __slots__ = ("mortal",)

    def __init__(self) -> None:
        super().__init__(dict.items)
        #: The keys of entries registered with ``alive`` (held strongly),
        #: the only ones :meth:`prune` looks at; stale keys are dropped there.
        self.mortal: set[int] = set()

    def _forget(self, key: int, ref: weakref.ref[Any]) -> None:
        entry = self.entries.get(key)
        if entry is not None and entry.get is ref:
            self.entries.pop(key, None)
            self.changed()

    def register(
        self,
        obj: object,
        quarantine: Quarantine,
        *,
        auto: bool,
        keep: bool = False,
        alive: Callable[[Any], bool] | None = None,
    ) -> None:
        """Quarantine ``obj`` in every child forked from now on.

        ``obj`` is held weakly if its type allows, else strongly until
        ``alive`` says it is closed (see :meth:`prune`). A ``track()``
        registration is never downgraded to an automatic one.
        """
        key = id(obj)
        old = self.entries.get(key)
        if old is not None and old.get() is obj:
            auto = auto and old.auto
        get = ref_or_strong(obj, functools.partial(self._forget, key))  # sqlite3: strong
        self.entries[key] = _Entry(get, quarantine, auto, keep, alive)
        if alive is not None:
            self.mortal.add(key)
        self.changed()

    def forget_auto(self) -> None:
        """Drop the registrations made by enable()'s discovery."""
        for key, entry in list(self.entries.items()):
            if entry.auto:
                self.entries.pop(key, None)
        self.changed()

    def prune(self) -> None:
        """Release strongly held objects that were closed since (parent
        side, after each fork). It looks at those alone: with none, the
        common case, it touches no entry (each is a page written after the
        fork)."""
        if not self.mortal:
            return
        for key in self.mortal.copy():  # a copy: other threads may register
            entry = self.entries.get(key)
            if entry is None or entry.alive is None:
                self.mortal.discard(key)
            elif not entry.alive(entry.get()):
                self.entries.pop(key, None)
                self.mortal.discard(key)
                self.changed()

    def tracked_count(self) -> int:
        return len(self.entries)

    def take(self) -> None:
        """In prepare: copy the entries for the child pass (a copy per
        version of them, so mostly none). With ``quarantine_all(taken=True)``
        the child then never reads the parent's dict: on the free-threaded
        build its lock may be held there by a thread the child does not have
        (one registering a connection at the fork)."""
        self.copy()

    def quarantine_all(self, *, taken: bool = False) -> None:
        """The child pass: quarantine every live registered object (those
        :meth:`take` copied, with ``taken``; the child then gets a dict of
        its own).

        One failure does not stop the others; the first is raised at the end
        so that atfork reports it through ``sys.unraisablehook``.
        """
        # A copy: a weak reference callback run by the garbage collector
        # during the loop may change the dict.
        items = self._taken[1] if taken else tuple(self.entries.items())
        if taken:
            self.entries = dict(items)
            self.changed()
        neutralise = Neutraliser()
        error: Exception | None = None
        try:
            for key, entry in items:
                obj = entry.get()
                if obj is None:
                    continue
                if not entry.keep:
                    self.entries.pop(key, None)
                    self.changed()
                try:
                    entry.quarantine(obj, neutralise)
                except Exception as exc:  # noqa: BLE001  (reported after the others ran)
                    error = error or exc
        finally:
            neutralise.close()
        if error is not None:
            raise error


# -- the hook: prepare (free-threaded build): a copy of the registry. child --------

# With the GIL no other thread can be half way through a dict operation at the
# fork: the child reads the registry itself, and the parent does nothing.


class ChildPass:
    """The hook that quarantines one registry's objects in each child.

    On the free-threaded build its prepare copies the registry, again only
    when it changed (:meth:`Registry.take`), and the child reads the copy;
    with the GIL there is no prepare and the child reads the registry.
    Nothing runs in the parent.
    """

    __slots__ = ("_hook", "_name", "_priority", "_registry")

    def __init__(self, registry: Registry, *, priority: int, name: str) -> None:
        self._registry = registry
        self._priority = priority
        self._name = name
        self._hook = HookSlot()

    def _prepare(self) -> None:
        self._registry.take()

    def _child(self) -> None:
        self._registry.quarantine_all(taken=FREE_THREADED)

    def ensure(self) -> None:
        """Register the hook unless it is registered."""
        self._hook.register(
            prepare=self._prepare if FREE_THREADED else None,
            child=self._child,
            priority=self._priority,
            name=self._name,
        )

    def remove(self) -> None:
        """Unregister the hook, if it is registered."""
        self._hook.release()


# -- patches installed by enable() -----------------------------------------------


class Patches:
    """The wrappers one integration installed, to be removed by its disable()."""

    __slots__ = ("_done", "_mark")

    def __init__(self, mark: str) -> None:
        #: The attribute that marks this integration's wrappers.
        self._mark = mark
        self._done: list[tuple[Any, str, Any, Any]] = []

    def patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Replace ``owner.name`` by ``make(original)`` unless already done."""
        current = getattr(owner, name)
        if getattr(current, self._mark, False):
            return
        wrapper = make(current)
        setattr(wrapper, self._mark, True)
        own = name in vars(owner)
        setattr(owner, name, wrapper)
        self._done.append((owner, name, current if own else None, wrapper))

    def unpatch(self) -> None:
        """Undo every :meth:`patch` whose wrapper is still in place."""
        while self._done:
            owner, name, original, wrapper = self._done.pop()
            if vars(owner).get(name) is wrapper:
                if original is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)


def registering_init(
    active: Callable[[], bool], track: Callable[..., object]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """For :meth:`Patches.patch`: an ``__init__`` wrapper that, while
    ``active()``, registers each new object with ``track(obj, auto=True)``."""

    def make(original: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            if active():
                track(self, auto=True)

        return __init__

    return make


def per_type(find: Callable[[Any], R]) -> Callable[[Any], R]:
    """``find(obj)``, remembered per type. It is first asked in the parent,
    when an object registers, so a child finds the answer ready."""
    cache: dict[type, R] = {}

    @functools.wraps(find)
    def lookup(obj: Any) -> R:
        kind = type(obj)
        try:
            return cache[kind]
        except KeyError:
            found = cache[kind] = find(obj)
            return found

    return lookup
