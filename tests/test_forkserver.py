"""multiprocessing's forkserver start method (Linux's default from Python 3.14).

The forkserver is a fresh interpreter that forks each worker: it inherits
ATFORK_INTEGRATIONS, so atfork.pth enables the integrations in it and they
repair its children; hooks the program registers at run time stay in the
program; a module named in ``set_forkserver_preload()`` is imported in the
forkserver, and the hooks it registers run in each of its children.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

import atfork
from atfork.testing import run_python

INSTALLED = "site-packages" in atfork.__file__  # atfork.pth is active only when installed
needs_pth = pytest.mark.skipif(not INSTALLED, reason="atfork.pth is only active when installed")

DEADLINE = 60.0

# What atfork.fork_origin() says in a forkserver child: the forkserver forks
# with os.fork(), from multiprocessing/forkserver.py.
FORKSERVER_ORIGIN = "multiprocessing"

# Importable by the forkserver and its children (the tests' PYTHONPATH).
WORKER = '''
"""Functions run in forkserver children, and the helper that starts them."""
import multiprocessing
import os


def in_two_children(function, preload=()):
    """What ``function`` returns in each of two forkserver children."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    results = []
    for _ in range(2):
        with context.Pool(1) as pool:
            results.append(pool.apply(function))
    return results


def random_enabled():
    import atfork.integrations.random
    return atfork.integrations.random.is_enabled()


def numpy_draw():
    import numpy.random
    return numpy.random.random()


def hooks_that_ran():
    """Whether the program's run-time hook ran here, and for each run of the
    preloaded module's hook: whether it ran in this process, and the origin."""
    import preloaded
    own = [(pid == os.getpid(), origin) for pid, origin in preloaded.children]
    return os.path.exists(os.environ["MARKER"]), own
'''

# Preloaded in the forkserver: its hook runs at each fork there.
PRELOADED = """
import os

import atfork

children = []


def child():
    children.append((os.getpid(), atfork.fork_origin()))


atfork.atfork(child=child)
"""


@pytest.fixture
def modules(tmp_path: Path) -> dict[str, str]:
    """A PYTHONPATH with the worker and preloaded modules, for run_python's env."""
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "preloaded.py").write_text(PRELOADED)
    path = [str(tmp_path)] if INSTALLED else [str(tmp_path), os.path.dirname(atfork.__path__[0])]
    return {"PYTHONPATH": os.pathsep.join(path), "MARKER": str(tmp_path / "runtime-hook-ran")}


def run(source: str, env: dict[str, str]) -> str:
    result = run_python(textwrap.dedent(source), env=env, timeout=DEADLINE)
    assert (0, "") == (result.returncode, result.stderr), result.stderr
    return result.stdout


@needs_pth
@pytest.mark.parametrize(("variable", "expected"), [("random", True), ("", False)])
def test_forkserver_children_have_the_integrations_of_the_variable(
    modules: dict[str, str], variable: str, expected: bool
) -> None:
    """With ATFORK_INTEGRATIONS set, forkserver children have the integrations enabled."""
    out = run(
        "import worker; print(worker.in_two_children(worker.random_enabled))",
        {**modules, "ATFORK_INTEGRATIONS": variable},
    )
    assert f"{[expected, expected]}\n" == out


@needs_pth
@pytest.mark.parametrize(("variable", "distinct"), [("random", True), ("", False)])
def test_forkserver_children_draw_their_own_numpy_numbers(
    modules: dict[str, str], variable: str, distinct: bool
) -> None:
    """With numpy.random preloaded in the forkserver, its children draw the same
    numbers unless ATFORK_INTEGRATIONS names random."""
    out = run(
        """
        import worker
        a, b = worker.in_two_children(worker.numpy_draw, preload=["numpy.random"])
        print(a != b)
        """,
        {**modules, "ATFORK_INTEGRATIONS": variable},
    )
    assert f"{distinct}\n" == out


def test_only_the_hooks_of_preloaded_modules_run_in_forkserver_children(
    modules: dict[str, str],
) -> None:
    """A hook the program registers at run time does not run in forkserver children;
    one registered by a module in set_forkserver_preload() runs once in each."""
    out = run(
        """
        import os
        import atfork
        import worker
        atfork.atfork(child=lambda: open(os.environ["MARKER"], "w").close())
        for ran in worker.in_two_children(worker.hooks_that_ran, preload=["preloaded"]):
            print(ran)
        """,
        {**modules, "ATFORK_INTEGRATIONS": ""},
    )
    expected = (False, [(True, FORKSERVER_ORIGIN)])
    assert f"{expected}\n{expected}\n" == out
