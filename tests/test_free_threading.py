"""Registrations changed by several threads while others fork (meant for 3.14t).

Every event is timestamped with :func:`time.monotonic_ns`, one clock for
every thread, so that each fork can be checked against what was registered
when it started. The churning threads stamp the start and the end of each
registration and unregistration; each fork stamps, in its forking thread,

* ``fork``: the moment ``os.fork()`` started, from an ``os.register_at_fork``
  hook that runs before atfork's own (registered later, it runs earlier);
* ``start``: its first prepare callback (a hook of the lowest priority),
  called once the fork's snapshot was fixed;
* ``parented``: its last parent callback (the same hook).

A hook whose registration returned before ``fork``, and whose
unregistration had not started at ``start``, must run all three phases
(a weak one only if its referents lived until ``parented``); one whose
``unregister()`` returned, or whose owner was seen dead, before ``fork``,
or whose registration started after ``start``, must run none. Hooks that
changed in between may go either way, but none gets a parent or child call
without its prepare, and a strong one whose prepare ran gets both.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import weakref
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from time import monotonic_ns
from typing import Any, Callable

import pytest

import atfork
from atfork.testing import run_in_child

CHURNERS = 4
FORKERS = 2
FORKS = 150  # by each forking thread
# Short-lived hooks change many times during one fork; long-lived ones span
# several forks, and some end during one.
POOL = 16  # short-lived hooks each churning thread keeps registered at most
LONG = 8  # long-lived ones, each ended at one step in LONG_ODDS
LONG_ODDS = 500

# A hook is held strongly; weakly, its callbacks kept alive by the test until
# it unregisters the hook; or weakly through the bound methods of an owner
# that the test drops instead of unregistering the hook.
STRONG, WEAK, OWNED = 0, 1, 2
KINDS = ("strong", "weak", "owned")

# What each churning thread records about each of its hooks, as one row of
# FIELDS integers in an array (hundreds of thousands of hooks are made).
KIND, PRIORITY, REG_START, REG_DONE, UNREG_START, UNREG_DONE, GONE = range(7)
FIELDS = 7
NEVER = 2**62  # the time of what did not happen
THREAD_BITS = 40  # a hook's tag: the churning thread's index, then the row

Log = list[tuple[int, str]]  # (tag, phase), in call order
Fork = tuple[dict[str, int], Log, Log]  # stamps, parent log, child log

_local = threading.local()


def note(tag: int, phase: str) -> None:
    """Record, in the log of the forking thread, that hook ``tag`` ran ``phase``."""
    log = getattr(_local, "log", None)
    if log is not None:
        log.append((tag, phase))


def stamp(name: str) -> None:
    """Record when the forking thread reached the point ``name`` of its fork."""
    stamps = getattr(_local, "stamps", None)
    if stamps is not None:
        stamps[name] = monotonic_ns()


def recorders(tag: int) -> tuple[Callable[[], None], ...]:
    return tuple(lambda phase=phase: note(tag, phase) for phase in ("prepare", "parent", "child"))


class Owner:
    """The object behind an owned hook's bound methods."""

    def __init__(self, tag: int) -> None:
        self.tag = tag

    def prepare(self) -> None:
        note(self.tag, "prepare")

    def parent(self) -> None:
        note(self.tag, "parent")

    def child(self) -> None:
        note(self.tag, "child")


_fork_stamp: list[bool] = []


def install_fork_stamp() -> None:
    """Stamp ``fork`` in every fork from now on (os.register_at_fork cannot be undone)."""
    if not _fork_stamp:
        os.register_at_fork(before=lambda: stamp("fork"))
        _fork_stamp.append(True)


def churn(index: int, rows: array[int], stop: threading.Event) -> None:
    """Register and end hooks of every kind until ``stop``, recording each in ``rows``."""
    rng = random.Random(index)
    pool: list[tuple[int, atfork.Hook, object]] = []  # row, hook, what keeps it alive
    long: list[tuple[int, atfork.Hook, object]] = []
    dying: list[tuple[int, atfork.Hook, weakref.ref[Owner]]] = []  # the owner dropped

    def end(entry: tuple[int, atfork.Hook, object]) -> None:
        row, hook, keep = entry
        base = row * FIELDS
        rows[base + UNREG_START] = monotonic_ns()
        if isinstance(keep, Owner):
            dying.append((row, hook, weakref.ref(keep)))
            del entry, keep  # the owner dies here, or in a forking thread calling it
        else:
            hook.unregister()
            rows[base + UNREG_DONE] = monotonic_ns()
            assert not hook.active

    while not stop.is_set():
        for death in dying[:]:
            if death[2]() is None:
                rows[death[0] * FIELDS + GONE] = monotonic_ns()
                assert not death[1].active
                dying.remove(death)
        if long and rng.randrange(LONG_ODDS) == 0:
            end(long.pop(rng.randrange(len(long))))
        elif len(long) < LONG or (len(pool) < POOL and (not pool or rng.random() < 0.5)):
            row = len(rows) // FIELDS
            tag = index << THREAD_BITS | row
            kind = rng.randrange(3)
            priority = rng.randrange(-1, 2)
            keep: object
            callbacks: tuple[Callable[[], None], ...]
            if kind == OWNED:
                keep = owner = Owner(tag)
                callbacks = (owner.prepare, owner.parent, owner.child)
                del owner
            else:
                keep = callbacks = recorders(tag)
            start = monotonic_ns()
            hook = atfork.atfork(*callbacks, priority=priority, weak=kind != STRONG)
            rows.extend((kind, priority, start, monotonic_ns(), NEVER, NEVER, NEVER))
            (long if len(long) < LONG else pool).append((row, hook, keep))
            del keep, callbacks
        else:
            end(pool.pop(rng.randrange(len(pool))))
    for hooks in (pool, long):
        while hooks:
            end(hooks.pop())


def observed_in_child() -> Log:
    log: Log = _local.log
    return log


def fork_repeatedly(forks: list[Fork]) -> None:
    """Fork FORKS times, keeping each fork's stamps, parent log and child log."""
    for _ in range(FORKS):
        log: Log = []
        stamps: dict[str, int] = {}
        _local.log, _local.stamps = log, stamps
        child_log = run_in_child(observed_in_child, timeout=30)
        _local.log = _local.stamps = None
        forks.append((stamps, log, child_log))


class Rows:
    """The records of every churning thread, by tag."""

    def __init__(self, rows: list[array[int]]) -> None:
        self.rows = rows

    def __getitem__(self, tag: int) -> array[int]:
        row = tag & ((1 << THREAD_BITS) - 1)
        return self.rows[tag >> THREAD_BITS][row * FIELDS : (row + 1) * FIELDS]

    def __iter__(self) -> Iterator[tuple[int, array[int]]]:
        for index, rows in enumerate(self.rows):
            for row in range(len(rows) // FIELDS):
                yield index << THREAD_BITS | row, rows[row * FIELDS : (row + 1) * FIELDS]


def live_from_start(record: array[int], stamps: dict[str, int]) -> bool:
    """Whether a hook registered before a fork was still live at its start: not
    yet being unregistered, and for a weak hook, whose referents die once the
    test ends it, not until the end of the parent phase."""
    until = stamps["start"] if record[KIND] == STRONG else stamps["parented"]
    return record[UNREG_START] > until


def must_run(forks: list[Fork], rows: Rows) -> list[set[int]]:
    """For each fork, the hooks that must run all three phases in it."""
    order = sorted(range(len(forks)), key=lambda i: forks[i][0]["fork"])
    starts = [forks[i][0]["fork"] for i in order]
    must: list[set[int]] = [set() for _ in forks]
    for tag, record in rows:
        position = bisect_right(starts, record[REG_DONE])
        while position < len(starts) and starts[position] < record[UNREG_START]:
            if live_from_start(record, forks[order[position]][0]):
                must[order[position]].add(tag)
            position += 1
    return must


def violations(fork: Fork, must: set[int], rows: Rows) -> list[str]:
    """What ``fork`` did that the contract forbids, given the hooks it ``must`` run."""
    stamps, parent_log, child_log = fork
    missing = {"fork", "start", "parented"} - set(stamps)
    if missing:
        return [f"no {sorted(missing)} stamp"]
    problems = []
    calls = {
        "prepare": [tag for tag, phase in parent_log if phase == "prepare"],
        "parent": [tag for tag, phase in parent_log if phase == "parent"],
        "child": [tag for tag, phase in child_log if phase == "child"],
    }
    if calls["prepare"] != [tag for tag, phase in child_log if phase == "prepare"]:
        problems.append("the child's log does not start with the prepare phase")
    ran = {phase: set(tags) for phase, tags in calls.items()}
    for phase, tags in calls.items():
        if len(tags) != len(ran[phase]):
            problems.append(f"a hook ran its {phase} twice")
    for tag in sorted(must | ran["prepare"] | ran["parent"] | ran["child"]):
        record = rows[tag]
        phases = [phase for phase in calls if tag in ran[phase]]
        what = f"{KINDS[record[KIND]]} hook {tag:#x} ran {phases}"
        if tag in must and len(phases) != 3:
            problems.append(f"{what}, live at the fork")
        if record[UNREG_DONE] < stamps["fork"] and phases:
            problems.append(f"{what}, unregistered before the fork")
        if record[GONE] < stamps["fork"] and phases:
            problems.append(f"{what}, its owner dead before the fork")
        if record[REG_START] > stamps["start"] and phases:
            problems.append(f"{what}, registered after its prepare phase started")
        if phases and tag not in ran["prepare"]:
            problems.append(f"{what}: parent or child without prepare")
        if record[KIND] == STRONG and phases and len(phases) != 3:
            problems.append(f"{what}: prepare without parent or child")
    # Order: prepare is the exact reverse of parent and child; parent runs
    # priority descending, equal priorities in registration order.
    whole = ran["prepare"] & ran["parent"] & ran["child"]
    prepare = [tag for tag in reversed(calls["prepare"]) if tag in whole]
    parent = [tag for tag in calls["parent"] if tag in whole]
    child = [tag for tag in calls["child"] if tag in whole]
    if not prepare == parent == child:
        problems.append("the prepare order is not the reverse of the parent and child order")
    records = [rows[tag] for tag in calls["parent"]]
    for i, earlier in enumerate(records):
        for later in records[i + 1 :]:
            if earlier[PRIORITY] < later[PRIORITY]:
                problems.append("a lower priority ran earlier in the parent phase")
            elif earlier[PRIORITY] == later[PRIORITY] and later[REG_DONE] < earlier[REG_START]:
                problems.append("a later registration ran earlier in the parent phase")
    return problems


@pytest.fixture
def short_switch_interval() -> Iterator[None]:
    """With a GIL, hand it over more often: the churning threads never block,
    and would starve the forking ones (this changes the speed, not the races)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("short_switch_interval")
def test_each_fork_runs_the_hooks_registered_when_it_started() -> None:
    """While four threads register and end strong, weak and owned hooks, each fork of
    two other threads runs exactly the hooks live when it started, in order."""
    before = set(atfork.hooks())
    install_fork_stamp()
    stamper = atfork.atfork(
        prepare=lambda: stamp("start"), parent=lambda: stamp("parented"), priority=-(10**6)
    )
    stop = threading.Event()
    rows: list[array[int]] = [array("q") for _ in range(CHURNERS)]
    forks: list[list[Fork]] = [[] for _ in range(FORKERS)]
    errors: list[BaseException] = []

    def run(target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001  (the test fails with it)
            errors.append(exc)

    churners = [
        threading.Thread(target=run, args=(churn, i, rows[i], stop)) for i in range(CHURNERS)
    ]
    forkers = [
        threading.Thread(target=run, args=(fork_repeatedly, forks[i])) for i in range(FORKERS)
    ]
    for thread in churners + forkers:
        thread.start()
    for thread in forkers:
        thread.join(120)
    stop.set()
    for thread in churners:
        thread.join(30)
    stamper.unregister()
    assert [] == errors
    assert [] == [thread for thread in churners + forkers if thread.is_alive()]
    assert [FORKS] * FORKERS == [len(f) for f in forks]
    gc.collect()  # the owners dropped last
    assert set() == set(atfork.hooks()) - before
    records = Rows(rows)
    every_fork = [fork for f in forks for fork in f]
    must = must_run(every_fork, records)
    problems = [
        f"fork {i}: {problem}"
        for i, (fork, live) in enumerate(zip(every_fork, must))
        for problem in violations(fork, live, records)
    ]
    assert [] == problems[:20]
    # Not vacuous: most forks had hooks to run.
    assert len(every_fork) < 2 * sum(1 for live in must if live)
