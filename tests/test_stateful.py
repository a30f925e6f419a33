"""A model of the registry checked against the real one, fork by fork (hypothesis)."""

from __future__ import annotations

import gc
from typing import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

import atfork
from atfork.testing import run_in_child

PHASES = ("prepare", "parent", "child")
Call = tuple[int, str]


class Owner:
    """The object behind a weak hook's bound methods."""

    def __init__(self, tag: int, log: list[Call]) -> None:
        self.tag, self.log = tag, log

    def prepare(self) -> None:
        self.log.append((self.tag, "prepare"))

    def parent(self) -> None:
        self.log.append((self.tag, "parent"))

    def child(self) -> None:
        self.log.append((self.tag, "child"))


def recorder(log: list[Call], tag: int, phase: str) -> Callable[[], None]:
    return lambda: log.append((tag, phase))


class RegistryMachine(RuleBasedStateMachine):
    tags = Bundle("tags")

    def __init__(self) -> None:
        super().__init__()
        self.log: list[Call] = []
        self.hooks: dict[int, atfork.Hook] = {}
        self.owners: dict[int, Owner] = {}
        # The model: the live registrations, by tag (tags grow with registration order).
        self.model: dict[int, tuple[int, frozenset[str]]] = {}

    def teardown(self) -> None:
        for hook in self.hooks.values():
            hook.unregister()

    # -- the model's predictions ---------------------------------------------

    def order(self) -> list[int]:
        return sorted(self.model, key=lambda tag: (-self.model[tag][0], tag))

    def calls(self, phase: str) -> list[Call]:
        tags = self.order()
        if phase == "prepare":
            tags.reverse()
        return [(tag, phase) for tag in tags if phase in self.model[tag][1]]

    # -- rules ----------------------------------------------------------------

    @rule(
        target=tags,
        priority=st.integers(-2, 2),
        phases=st.frozensets(st.sampled_from(PHASES), min_size=1),
        weak=st.booleans(),
    )
    def register(self, priority: int, phases: frozenset[str], weak: bool) -> int:
        tag = len(self.hooks)
        if weak:
            owner = self.owners[tag] = Owner(tag, self.log)
            callbacks = {phase: getattr(owner, phase) for phase in phases}
        else:
            callbacks = {phase: recorder(self.log, tag, phase) for phase in phases}
        self.hooks[tag] = atfork.atfork(**callbacks, priority=priority, weak=weak)
        self.model[tag] = (priority, phases)
        return tag

    @rule(tag=tags)
    def unregister(self, tag: int) -> None:
        self.hooks[tag].unregister()
        self.model.pop(tag, None)

    @rule(tag=tags)
    def owner_dies(self, tag: int) -> None:
        if self.owners.pop(tag, None) is not None:
            gc.collect()
            self.model.pop(tag, None)

    @rule()
    def fork(self) -> None:
        del self.log[:]
        child_log = run_in_child(lambda: list(self.log))
        prepare = self.calls("prepare")
        assert prepare + self.calls("parent") == self.log
        assert prepare + self.calls("child") == child_log

    @rule(priority=st.integers(-3, 3))
    def fork_from_a_parent_callback(self, priority: int) -> None:
        """A parent callback forks: the grandchild gets a full cycle of its own."""
        grandchild: list[list[Call]] = []

        def fork_again() -> None:
            if not grandchild:
                grandchild.append([])
                grandchild[0] = run_in_child(lambda: list(self.log))

        forker = atfork.atfork(parent=fork_again, priority=priority)
        try:
            del self.log[:]
            run_in_child(lambda: None)
        finally:
            forker.unregister()
        prepare, parent = self.calls("prepare"), self.calls("parent")
        # The forker runs after every hook of its priority or higher.
        split = sum(1 for tag, _ in parent if self.model[tag][0] >= priority)
        nested_parent = prepare + parent[:split] + prepare
        assert nested_parent + self.calls("child") == grandchild[0]
        assert nested_parent + parent + parent[split:] == self.log

    @invariant()
    def active_matches_the_model(self) -> None:
        for tag, hook in self.hooks.items():
            assert (tag in self.model) == hook.active


TestRegistry = RegistryMachine.TestCase
TestRegistry.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
