"""Generators that enable() finds without track() (atfork.integrations.random).

Each scenario runs in a fresh interpreter, forks three siblings and prints
their draws as JSON; without the integration every sibling draws the same.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import test_random  # this folder is on sys.path, as for db_servers

from atfork.integrations import random as atfork_random

np = pytest.importorskip("numpy", reason="numpy is a test dependency (pip install .[test])")

_PROLOGUE = """\
import json, random, sys
import atfork.integrations.random as atfork_random
from atfork.testing import run_in_child

def churn():
    # enough new objects for several collections: what was made moves out of
    # the youngest generation before the fork
    junk = [[i] for i in range(30000)]
    del junk

def siblings(generators):
    def draw():
        return {name: float(rng()) for name, rng in generators.items()}
    children = [run_in_child(draw) for _ in range(3)]
    return {name: len({child[name] for child in children}) for name in generators}
"""


def run_scenario(source: str, **params: Any) -> Any:
    """test_random's scenario runner, with this module's prologue."""
    return test_random.run_scenario(source, _PROLOGUE, **params)


_RANDOM_AFTER = """
class OwnInit(random.Random):
    # Never calls random.Random.__init__; y is keyword-only, as 3.10's
    # Random.__new__ refuses a second positional argument even for a subclass.
    def __init__(self, x, *, y):
        self.seed(x + y)

if WITH_ATFORK:
    atfork_random.enable()
plain, own = random.Random(5), OwnInit(2, y=3)
churn()
print(json.dumps(siblings({"Random(5)": plain.random, "OwnInit(2, y=3)": own.random})))
"""


@pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
def test_random_instances_made_after_enable(with_atfork: bool) -> None:
    """A random.Random, or a subclass with its own __init__, made after
    enable() and never tracked, draws differently in each sibling."""
    expected = 3 if with_atfork else 1
    actual = run_scenario(_RANDOM_AFTER, WITH_ATFORK=with_atfork)
    assert {"Random(5)": expected, "OwnInit(2, y=3)": expected} == actual


_RANDOM_BEFORE = """
rng = random.Random(5)
churn()
if WITH_ATFORK:
    atfork_random.enable()
print(json.dumps(siblings({"Random(5)": rng.random})))
"""


@pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
def test_random_instances_made_before_enable(with_atfork: bool) -> None:
    """A random.Random made before enable() is found by it."""
    actual = run_scenario(_RANDOM_BEFORE, WITH_ATFORK=with_atfork)
    assert {"Random(5)": 3 if with_atfork else 1} == actual


_NUMPY = """
if NUMPY_FIRST:
    import numpy as np
if WITH_ATFORK and not BEFORE:
    atfork_random.enable()
if not NUMPY_FIRST:
    import numpy as np
    assert WITH_ATFORK or "numpy" in sys.modules
made = {
    "default_rng()": np.random.default_rng().random,
    "default_rng(5)": np.random.default_rng(5).random,
    "Generator(PCG64(5))": np.random.Generator(np.random.PCG64(5)).random,
    "Generator(Philox(5))": np.random.Generator(np.random.Philox(5)).random,
    "RandomState(5)": np.random.RandomState(5).random,
    "RandomState(5) standard_normal": np.random.RandomState(5).standard_normal,
    "SFC64(5)": np.random.SFC64(5).random_raw,
    "MT19937(5)": np.random.MT19937(5).random_raw,
    "PCG64DXSM(5)": np.random.PCG64DXSM(5).random_raw,
}
made["RandomState(5) standard_normal"]()  # caches the pair's second normal
churn()
if WITH_ATFORK and BEFORE:
    atfork_random.enable()
print(json.dumps(siblings(made)))
"""


@pytest.mark.parametrize(
    ("before", "numpy_first"),
    [(False, True), (True, True), (False, False)],
    ids=["made-after-enable", "made-before-enable", "numpy-imported-after-enable"],
)
@pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
def test_numpy_generators(with_atfork: bool, before: bool, numpy_first: bool) -> None:
    """numpy Generators (from default_rng or built on a bit generator),
    RandomStates and bare bit generators, never tracked, draw differently in
    each sibling, whether made before or after enable(), and numpy imported
    before or after it."""
    actual = run_scenario(_NUMPY, WITH_ATFORK=with_atfork, BEFORE=before, NUMPY_FIRST=numpy_first)
    assert dict.fromkeys(actual, 3 if with_atfork else 1) == actual
    assert 9 == len(actual)


_DERIVED = """
import numpy as np
atfork_random.enable(mode="derived", seed=SEED)
generators = {"Random(1)": random.Random(1).random}
generators["default_rng(1)"] = np.random.default_rng(1).random
generators["RandomState(1)"] = np.random.RandomState(1).random
churn()

def draw():
    return {name: float(rng()) for name, rng in generators.items()}

print(json.dumps([run_in_child(draw) for _ in range(3)]))
"""


def test_found_generators_in_derived_mode_are_reproducible() -> None:
    """In derived mode, generators found without track() draw the same in
    each child from run to run, and differently in each sibling."""
    first = run_scenario(_DERIVED, SEED=11)
    assert first == run_scenario(_DERIVED, SEED=11)
    assert dict.fromkeys(first[0], 3) == {
        name: len({child[name] for child in first}) for name in first[0]
    }
    assert first != run_scenario(_DERIVED, SEED=12)


_RELEASED = """
import numpy as np
atfork_random.enable()
for _ in range(5000):
    np.random.default_rng().random()
churn()
run_in_child(lambda: None)
held = sum(1 for entry in atfork_random._tracked.values() if entry.kind != "random")
print(json.dumps(held))
"""


def test_found_numpy_generators_are_released() -> None:
    """Found numpy generators cannot be weakly referenced: they are dropped
    once nothing else holds them, so 5000 of them made and dropped leave at
    most a few dozen held."""
    held = run_scenario(_RELEASED)
    assert held <= 200, held


_UNTRACKED = """
import numpy as np
atfork_random.enable()
rng = np.random.default_rng(5)
other = random.Random(5)
churn()
atfork_random.untrack(rng)
atfork_random.untrack(other)
churn()
print(json.dumps(siblings({"default_rng(5)": rng.random, "Random(5)": other.random})))
"""


def test_untrack_leaves_a_found_generator_alone() -> None:
    """untrack() on a found generator stops its reseeding for good."""
    assert {"default_rng(5)": 1, "Random(5)": 1} == run_scenario(_UNTRACKED)


_DISABLED = """
import numpy as np
import numpy.random.bit_generator as bit_generator
lock_name = "RLock" if hasattr(bit_generator, "RLock") else "Lock"
lock_factory = getattr(bit_generator, lock_name)
atfork_random.enable()
changed = [getattr(bit_generator, lock_name) is not lock_factory, "__new__" in vars(random.Random)]
atfork_random.disable()
restored = [getattr(bit_generator, lock_name) is lock_factory, "__new__" not in vars(random.Random)]
rng = random.Random(5)
print(json.dumps([changed, restored, siblings({"Random(5)": rng.random})]))
"""


def test_disable_undoes_the_finding() -> None:
    """disable() gives random.Random and numpy back their own construction,
    and generators made afterwards are left alone."""
    assert [[True, True], [True, True], {"Random(5)": 1}] == run_scenario(_DISABLED)


def test_system_random_is_not_held() -> None:
    """SystemRandom reads the kernel at each call: nothing is kept of it."""
    atfork_random.enable()
    try:
        rng = random.SystemRandom()
        assert id(rng) not in atfork_random._tracked
    finally:
        atfork_random.disable()
