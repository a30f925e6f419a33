"""torch's default CPU generator after fork (atfork.integrations.random).

tox installs torch on CPython 3.11 only (the one wheel this project's
machines hold): there these tests must run, and on the other Pythons there
is nothing to collect, rather than tests that skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from atfork.testing import run_python

TORCH_PYTHON = (3, 11)
HAVE_TORCH = importlib.util.find_spec("torch") is not None
SEED = 20240611

if sys.version_info[:2] == TORCH_PYTHON:

    def test_torch_is_installed() -> None:
        """On CPython 3.11 the torch tests below run: torch must be installed."""
        if not HAVE_TORCH:
            pytest.skip(
                "torch is not installed; tox installs torch==2.13.0 for py311 "
                f"(ATFORK_NO_SKIP={os.environ.get('ATFORK_NO_SKIP', '')!r})"
            )


_FAMILY = """\
import json, random
import numpy as np
import torch
import atfork.integrations.random as atfork_random
from atfork.testing import run_in_child

if WITH_ATFORK:
    atfork_random.enable(mode=MODE, seed=SEED if MODE == "derived" else None)

def expected(key):
    # The documented derived scheme: torch is stream 2.
    words = np.random.SeedSequence(SEED, spawn_key=(*key, 2)).generate_state(2)
    generator = torch.Generator().manual_seed(int(words[0]) | int(words[1]) << 32)
    return torch.rand(1, generator=generator).item()

draws = [run_in_child(lambda: torch.rand(1).item()) for _ in range(3)]
print(json.dumps([draws, [expected((k,)) for k in range(3)]]))
"""


def run_family(with_atfork: bool, mode: str) -> tuple[list[float], list[float]]:
    """Three forked children's first torch.rand() draws, and the draws the
    derived scheme gives them."""
    source = f"WITH_ATFORK = {with_atfork!r}; MODE = {mode!r}; SEED = {SEED!r}\n" + _FAMILY
    result = run_python(source, timeout=120)
    assert 0 == result.returncode, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    draws, expected = json.loads(result.stdout.splitlines()[-1])
    return draws, expected


if HAVE_TORCH:

    @pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
    def test_torch_children_draw_different_numbers(with_atfork: bool) -> None:
        """Without atfork every child draws torch's parent stream; with it
        (fresh mode) each child its own."""
        draws, _ = run_family(with_atfork, "fresh")
        assert (3 if with_atfork else 1) == len(set(draws))

    @pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
    def test_torch_derived_children_are_reproducible(with_atfork: bool) -> None:
        """Without atfork torch's children repeat each other and differ from
        run to run; with derived mode they are distinct, the same in two
        runs, and seeded as documented."""
        first, expected = run_family(with_atfork, "derived")
        second, _ = run_family(with_atfork, "derived")
        if with_atfork:
            assert first == second
            assert expected == first
            assert 3 == len(set(first))
        else:
            assert first != second
            assert 1 == len(set(first))


_BUSY_THREAD = """\
import threading, torch
import atfork.integrations.random as atfork_random
from atfork.testing import run_in_child, ChildTimeoutError

if WITH_ATFORK:
    atfork_random.enable()

stop = threading.Event()

def draw_until_stopped():
    while not stop.is_set():
        torch.rand(100000)

drawing = threading.Thread(target=draw_until_stopped)
drawing.start()
outcomes = []
for _ in range(FORKS):  # the mutex is held part of the time: about one fork in three
    try:
        outcomes.append(run_in_child(lambda: "exited", timeout=TIMEOUT))
    except ChildTimeoutError:
        outcomes.append("hung")
        if UNTIL_HUNG:
            break
stop.set()
drawing.join()  # a thread still in torch at exit makes the C++ runtime abort
print(outcomes)
"""


if HAVE_TORCH:

    def test_torch_reseed_never_hangs_a_child_while_another_thread_draws() -> None:
        """A thread drawing from torch at the fork may hold its generator's
        mutex; the integration then leaves torch alone rather than hang the
        child (which here never uses torch)."""
        source = "WITH_ATFORK = True; TIMEOUT = 10; FORKS = 20; UNTIL_HUNG = False\n"
        result = run_python(source + _BUSY_THREAD, timeout=300)
        assert (0, repr(["exited"] * 20) + "\n") == (result.returncode, result.stdout), (
            result.stderr
        )

    def test_a_naive_torch_reseed_hangs_children() -> None:
        """The hazard the thread count avoids: a child callback that reseeds
        torch while another thread draws from it hangs children that never
        use torch."""
        naive = "import atfork\natfork.atfork(child=lambda: torch.default_generator.manual_seed(1))"
        # Up to 200 forks, until one hangs: each has about one chance in three.
        source = "WITH_ATFORK = False; TIMEOUT = 2; FORKS = 200; UNTIL_HUNG = True\n"
        source += _BUSY_THREAD.replace("if WITH_ATFORK:", naive + "\nif WITH_ATFORK:")
        result = run_python(source, timeout=300)
        assert "hung" in result.stdout, (result.stdout, result.stderr)
