"""Random generators after fork (atfork.integrations.random).

Each failure is reproduced in a fresh interpreter without the integration,
then shown fixed with it; the scenarios print their draws as JSON.
"""

from __future__ import annotations

import gc
import json
import random
import re
import textwrap
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import atfork.integrations
from atfork._registry import registry
from atfork.integrations import random as atfork_random
from atfork.testing import run_in_child, run_python

np = pytest.importorskip("numpy", reason="numpy is a test dependency (pip install .[test])")

SEED = 20240611


@pytest.fixture(autouse=True)
def _disabled() -> Iterator[None]:
    """Each test starts and ends with the integration disabled."""
    atfork_random.disable()
    yield
    atfork_random.disable()


@pytest.fixture
def track() -> Iterator[Any]:
    """atfork_random.track, with everything it tracked untracked after the test."""
    tracked: list[Any] = []

    def track(rng: Any) -> Any:
        tracked.append(rng)
        return atfork_random.track(rng)

    yield track
    for rng in tracked:
        atfork_random.untrack(rng)


_PROLOGUE = """\
import json, os, random, sys, threading, time, warnings
import atfork.integrations.random as atfork_random
from atfork.testing import ChildTimeoutError, run_in_child, wait_child
"""


def run_scenario(source: str, prologue: str = _PROLOGUE, **params: Any) -> Any:
    """Run ``prologue`` and ``source`` in a fresh interpreter with ``params``
    as globals and return what its last line of output holds (JSON)."""
    assignments = "".join(f"{name} = {value!r}\n" for name, value in params.items())
    result = run_python(assignments + prologue + textwrap.dedent(source), timeout=60)
    assert 0 == result.returncode, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


# -- options and the public names ----------------------------------------------


def test_is_a_builtin_integration() -> None:
    """'random' is enabled by name, with its options."""
    assert "random" in atfork.integrations.BUILTIN
    atfork.integrations.enable("random", mode="derived", seed=5)
    assert atfork_random.is_enabled()
    assert 5 == atfork_random.root_seed()


def random_hooks() -> list[atfork.Hook]:
    return [h for h in registry.hooks() if h.name.startswith("atfork.integrations.random")]


def test_enable_and_disable_are_idempotent() -> None:
    """enable() twice registers one hook; disable() twice is harmless."""
    assert not atfork_random.is_enabled()
    atfork_random.enable()
    atfork_random.enable()
    assert atfork_random.is_enabled()
    assert 1 == len(random_hooks())
    atfork_random.disable()
    atfork_random.disable()
    assert not atfork_random.is_enabled()
    assert [] == random_hooks()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"mode": "fast"}, ValueError, "mode must be 'fresh' or 'derived', not 'fast'"),
        ({"mode": 1}, TypeError, "mode must be a str, not int"),
        ({"seed": 3}, ValueError, "seed is only used with mode='derived'"),
        ({"mode": "derived", "seed": -1}, ValueError, "seed must be non-negative, not -1"),
        ({"mode": "derived", "seed": 1.5}, TypeError, "seed must be an int, not float"),
        ({"mode": "derived", "seed": True}, TypeError, "seed must be an int, not bool"),
        ({"modes": "fresh"}, TypeError, "unexpected keyword argument 'modes'"),
    ],
)
def test_bad_options_are_refused(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Bad options raise at enable(), and leave the integration disabled."""
    with pytest.raises(error, match=re.escape(message)):
        atfork_random.enable(**options)
    assert not atfork_random.is_enabled()


def test_other_options_replace_the_ones_in_force() -> None:
    """enable() with other options switches mode or root seed."""
    atfork_random.enable(mode="derived", seed=1)
    atfork_random.enable(mode="derived", seed=2)
    assert 2 == atfork_random.root_seed()
    atfork_random.enable(mode="derived")
    assert 2 == atfork_random.root_seed()
    atfork_random.enable(mode="fresh")
    assert atfork_random.root_seed() is None


def test_the_drawn_root_seed_is_recorded() -> None:
    """Without a seed, derived mode draws 128 bits of entropy and exposes them."""
    atfork_random.enable(mode="derived")
    first = atfork_random.root_seed()
    atfork_random.disable()
    atfork_random.enable(mode="derived")
    second = atfork_random.root_seed()
    assert isinstance(first, int)
    assert isinstance(second, int)
    assert first != second
    assert 0 <= first < 2**128


def test_track_returns_its_argument(track: Any) -> None:
    """track() returns the generator itself, for every supported type."""
    for rng in (
        random.Random(),
        random.SystemRandom(),
        np.random.default_rng(),
        np.random.RandomState(),
        np.random.PCG64DXSM(),
        np.random.Generator(np.random.Philox()),
        np.random.Generator(np.random.SFC64()),
        np.random.MT19937(),
    ):
        assert rng is track(rng)
        assert rng is track(rng)  # twice is harmless


@pytest.mark.parametrize("thing", [object(), 42, random, np.random, np.random.SeedSequence(1)])
def test_track_refuses_other_objects(thing: object) -> None:
    """Anything else is a TypeError naming its type."""
    with pytest.raises(TypeError, match=r"^track\(\) takes a random.Random or a numpy Generator"):
        atfork_random.track(thing)


def test_random_instances_are_held_weakly() -> None:
    """A tracked random.Random is not kept alive by the tracking."""
    rng = random.Random()
    ref = weakref.ref(atfork_random.track(rng))
    del rng
    gc.collect()
    assert ref() is None


def test_untrack_stops_reseeding(track: Any) -> None:
    """An untracked numpy generator is left alone in the child again."""
    atfork_random.enable()
    rng = track(np.random.default_rng(SEED))
    assert run_in_child(rng.random) != np.random.default_rng(SEED).random()
    atfork_random.untrack(rng)
    atfork_random.untrack(rng)  # twice is harmless
    atfork_random.untrack(object())  # never tracked: harmless
    assert run_in_child(rng.random) == np.random.default_rng(SEED).random()


def test_generators_tracked_before_enable_are_reseeded(track: Any) -> None:
    """Generators tracked before enable() are reseeded once it is enabled."""
    rng = track(random.Random(SEED))
    assert run_in_child(rng.random) == random.Random(SEED).random()
    atfork_random.enable()
    assert run_in_child(rng.random) != random.Random(SEED).random()


# -- fresh mode: children draw different numbers -------------------------------

_SIBLINGS = """
import numpy as np
generators = {
    "random.Random(1234)": random.Random(1234),
    "numpy default_rng()": np.random.default_rng(),
    "numpy default_rng(1234)": np.random.default_rng(1234),
    "numpy RandomState(1234)": np.random.RandomState(1234),
    "numpy Generator(Philox())": np.random.Generator(np.random.Philox()),
}
bit_generator = np.random.SFC64(1234)
np.random.seed(1234)
np.random.standard_normal()  # leaves the second normal of a pair cached
if WITH_ATFORK:
    atfork_random.enable()
    for rng in [*generators.values(), bit_generator]:
        atfork_random.track(rng)

def draw():
    draws = {"numpy global standard_normal()": np.random.standard_normal()}
    draws["numpy global random()"] = np.random.random()
    draws["numpy SFC64 random_raw()"] = int(bit_generator.random_raw())
    draws["random global"] = random.random()
    for name, rng in generators.items():
        draws[name] = float(rng.random())
    return draws

print(json.dumps([run_in_child(draw) for _ in range(3)]))
"""


@pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
def test_children_draw_different_numbers(with_atfork: bool) -> None:
    """Without atfork, numpy's generators and private random.Random instances
    give every child the same draws (numpy issue 9650); with it, each child
    its own."""
    children = run_scenario(_SIBLINGS, WITH_ATFORK=with_atfork)
    distinct = {name: len({child[name] for child in children}) for name in children[0]}
    expected = dict.fromkeys(distinct, 3 if with_atfork else 1)
    expected["random global"] = 3  # CPython reseeds the global instance itself
    assert expected == distinct


# -- a numpy generator's lock held by another thread at fork --------------------

_LOCK_HELD = """
import numpy as np
warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
rng = np.random.default_rng()
if WITH_ATFORK:
    atfork_random.enable()
    atfork_random.track(rng)
draw_from = {"global": np.random.random, "tracked": rng.random}
stop = threading.Event()

def keep_drawing(draw):
    while not stop.is_set():
        draw(10**6)  # holds the generator's lock most of the time

for draw in draw_from.values():
    threading.Thread(target=keep_drawing, args=(draw,), daemon=True).start()

def held(lock):
    if lock.acquire(False):
        lock.release()
        return False
    return True

locks = [np.random.mtrand._rand._bit_generator.lock, rng.bit_generator.lock]
deadline = time.monotonic() + 30
while not all(held(lock) for lock in locks):  # fork while both threads draw
    assert time.monotonic() < deadline, "the drawing threads never held both locks"
pid = os.fork()
if pid == 0:
    np.random.random()
    rng.random()
    os._exit(0)
try:
    outcome = f"exit {wait_child(pid, timeout=TIMEOUT)}"
except ChildTimeoutError:
    outcome = "hung"
stop.set()
print(json.dumps(outcome))
"""


@pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
def test_child_draws_although_a_thread_held_the_lock(with_atfork: bool) -> None:
    """Without atfork, a child forked while threads drew from numpy's global
    and a tracked generator hangs at its first draw (numpy issue 9248); with
    it, the child draws from both and exits."""
    outcome = run_scenario(_LOCK_HELD, WITH_ATFORK=with_atfork, TIMEOUT=30 if with_atfork else 3)
    assert ("exit 0" if with_atfork else "hung") == outcome


_OWN_LOCK = """
import numpy as np
rng = np.random.default_rng()
atfork_random.enable()
atfork_random.track(rng)
lock = rng.bit_generator.lock
try:
    with lock:  # the forking thread itself holds the lock across the fork
        pid = os.fork()
        if pid == 0:
            rng.random()  # an RLock lets its owner in again
except RuntimeError:  # releasing it: the child found it free already
    os._exit(3)
if pid == 0:
    os._exit(0)
print(json.dumps([type(lock).__name__, wait_child(pid, timeout=30)]))
"""


def test_the_forking_threads_own_hold_on_a_generator_lock() -> None:
    """numpy 2.3+ (an RLock) keeps the forking thread's own hold on a
    generator's lock in the child; with numpy's older plain Lock it cannot
    tell who held it, and the child finds it free (documented)."""
    lock_type, exit_code = run_scenario(_OWN_LOCK)
    assert {"RLock": 0, "lock": 3}[lock_type] == exit_code


# -- the parent's own streams ---------------------------------------------------


@pytest.mark.parametrize("mode", atfork_random.MODES)
def test_the_parent_draws_as_if_it_had_not_forked(mode: str, track: Any) -> None:
    """Forking changes none of the parent's streams: its draws equal those of
    a run that did not fork."""

    def run(fork: bool) -> list[float]:
        random.seed(SEED)
        np.random.seed(SEED)
        generators = [random.Random(SEED), np.random.default_rng(SEED), np.random.RandomState(SEED)]
        for rng in generators:
            track(rng)
        draws = [random.random(), np.random.standard_normal()]
        if fork:
            for _ in range(3):
                run_in_child(random.random)
        draws += [random.random(), np.random.standard_normal(), np.random.random()]
        return draws + [float(rng.random()) for rng in generators]

    atfork_random.enable(mode=mode, seed=SEED if mode == "derived" else None)
    with_forks = run(fork=True)
    atfork_random.disable()
    assert run(fork=False) == with_forks


# -- derived mode ------------------------------------------------------------------

_FAMILY = """
if not WITH_NUMPY:
    sys.modules["numpy"] = None  # as if numpy were not installed
    try:
        import numpy
    except ImportError:
        pass
    else:
        raise AssertionError("numpy was imported")
random.seed(42)
tracked = random.Random(7)
generators = {"random global": random.random, "random.Random(7)": tracked.random}
if WITH_NUMPY:
    import numpy as np
    np.random.seed(42)
    rng = np.random.default_rng(1)
    generators["numpy global"] = np.random.random
    generators["numpy default_rng(1)"] = rng.random
if WITH_ATFORK:
    atfork_random.enable(mode="derived", seed=SEED)
    atfork_random.track(tracked)  # stream 3
    if WITH_NUMPY:
        atfork_random.track(rng)  # stream 4

def draw():
    return [atfork_random.spawn_key(), {name: float(g()) for name, g in generators.items()}]

def child():
    return [draw(), run_in_child(draw), run_in_child(draw)]

# The stream numbers, in the order the integration found or was given them.
streams = [atfork_random._tracked[id(tracked)].stream if WITH_ATFORK else 0]
if WITH_NUMPY:
    streams.append(atfork_random._tracked[id(rng)].stream if WITH_ATFORK else 0)
print(json.dumps([streams, [run_in_child(child) for _ in range(3)]]))
"""


def family(
    with_atfork: bool, with_numpy: bool
) -> tuple[list[int], dict[tuple[int, ...], dict[str, float]]]:
    """The stream numbers of random.Random(7) and default_rng(1), and three
    children with two children each: each one's draws, by place in the
    process tree (the fork indices leading to it)."""
    streams, children = run_scenario(
        _FAMILY, WITH_ATFORK=with_atfork, WITH_NUMPY=with_numpy, SEED=SEED
    )
    draws = {}
    for k, generation in enumerate(children):
        for key, (spawn_key, process_draws) in zip([(k,), (k, 0), (k, 1)], generation):
            assert (list(key) if with_atfork else []) == spawn_key
            draws[key] = process_draws
    return streams, draws


def expected_draws(key: tuple[int, ...], with_numpy: bool, streams: list[int]) -> dict[str, float]:
    """The documented derived scheme, computed with numpy's own SeedSequence."""

    def state(stream: int, n_words: int) -> list[int]:
        words = np.random.SeedSequence(SEED, spawn_key=(*key, stream)).generate_state(n_words)
        return [int(w) for w in words]

    def integer(words: list[int]) -> int:
        return sum(w << (32 * i) for i, w in enumerate(words))

    draws = {
        "random global": random.Random(integer(state(0, 4))).random(),
        "random.Random(7)": random.Random(integer(state(streams[0], 4))).random(),
    }
    if with_numpy:
        draws["numpy global"] = np.random.RandomState(state(1, 4)).random()
        sequence = np.random.SeedSequence(SEED, spawn_key=(*key, streams[1]))
        draws["numpy default_rng(1)"] = np.random.Generator(np.random.PCG64(sequence)).random()
    return draws


@pytest.mark.parametrize("with_numpy", [True, False], ids=["numpy", "no-numpy"])
@pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
def test_derived_children_are_reproducible_and_distinct(
    with_atfork: bool, with_numpy: bool
) -> None:
    """Two runs of a seeded program: without atfork the children's global
    random draws differ from run to run while every other stream repeats in
    every sibling; with derived mode each child and grandchild draws the same
    in both runs, differently from all the others, as the documented scheme
    says, with or without numpy."""
    streams, first = family(with_atfork, with_numpy)
    second_streams, second = family(with_atfork, with_numpy)
    names = list(first[(0,)])
    distinct = {name: len({draws[name] for draws in first.values()}) for name in names}
    if with_atfork:
        assert (streams, first) == (second_streams, second)
        assert dict.fromkeys(names, 9) == distinct
        assert {key: expected_draws(key, with_numpy, streams) for key in first} == first
    else:
        assert [d["random global"] for d in first.values()] != [
            d["random global"] for d in second.values()
        ]
        # One value per generation: each child repeats its siblings.
        assert {name: 9 if name == "random global" else 2 for name in names} == distinct


_ROOT = """
atfork_random.enable(mode="derived", seed=ROOT)
child = run_in_child(lambda: [atfork_random.root_seed(), random.random()])
print(json.dumps([atfork_random.root_seed(), child]))
"""


def test_a_drawn_root_seed_reproduces_the_children() -> None:
    """The root seed drawn when none is given, passed back as seed, gives the
    same children; the children report the same root."""
    root, (child_root, draw) = run_scenario(_ROOT, ROOT=None)
    assert root == child_root
    assert [root, [root, draw]] == run_scenario(_ROOT, ROOT=root)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_children_of_concurrent_forks_get_distinct_keys() -> None:
    """Two threads forking at once never give two children the same place."""
    atfork_random.enable(mode="derived", seed=SEED)
    keys: list[tuple[int, ...]] = []

    def fork_some() -> None:
        for _ in range(10):
            keys.append(tuple(run_in_child(atfork_random.spawn_key)))

    threads = [threading.Thread(target=fork_some) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [(k,) for k in range(20)] == sorted(keys)
    assert () == atfork_random.spawn_key()
    assert [(20,)] == [tuple(run_in_child(atfork_random.spawn_key))]


_UNHOOKED = """
import ctypes
import atfork
atfork_random.enable(mode="derived", seed=7)

def unhooked_child():
    # fork() as a C extension calls it: no Python fork hook runs; the
    # child calls atfork.check(), as uWSGI's post-fork hook does.
    read, write = os.pipe()
    pid = ctypes.PyDLL(None).fork()
    if pid == 0:
        atfork.check()
        os.write(write, json.dumps([random.random(), atfork_random.spawn_key()]).encode())
        os._exit(0)
    os.close(write)
    wait_child(pid, timeout=30)
    return json.loads(os.read(read, 1000))

print(json.dumps([unhooked_child(), unhooked_child(), random.random()]))
"""


def test_children_of_unhooked_forks_get_distinct_places() -> None:
    """A child whose fork ran no prepare phase, seeded by atfork.check(), has
    no known place among its siblings: it gets a random one, so two such
    children draw differently from each other and from the parent."""
    (first, first_key), (second, second_key), parent = run_scenario(_UNHOOKED)
    assert len({first, second, parent}) == 3
    assert first_key != second_key
    assert 1 == len(first_key) == len(second_key)


# -- what enabling imports ----------------------------------------------------------

_IMPORTS = """
atfork_random.enable(mode=MODE)
run_in_child(random.random)
print(json.dumps(sorted(m for m in ("numpy", "torch") if m in sys.modules)))
"""


@pytest.mark.parametrize("mode", atfork_random.MODES)
def test_enabling_and_forking_import_neither_numpy_nor_torch(mode: str) -> None:
    """Neither enable() nor a fork imports numpy or torch."""
    assert [] == run_scenario(_IMPORTS, MODE=mode)
