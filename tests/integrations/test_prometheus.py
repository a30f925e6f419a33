"""prometheus_client's multiprocess mode across fork (atfork.integrations.prometheus).

Each scenario runs in a fresh interpreter with a real
``PROMETHEUS_MULTIPROC_DIR``, once without atfork, showing the failure, and
once with the integration; the metrics are read back with
``MultiProcessCollector``, as a scrape would.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import atfork.integrations
from atfork.integrations import prometheus as atfork_prometheus
from atfork.testing import run_python

pytest.importorskip("prometheus_client", reason="prometheus_client is not installed")

# Seconds a child may take: short where it is expected to hang.
HANG_DEADLINE = 5
DEADLINE = 30

# Makes another thread hold the shared lock of a value class, as it does
# inside inc(), set() or observe(), until release is set.
HOLD = """
import threading
release = threading.Event()

def hold(value_class):
    inc = value_class.inc
    lock = inc.__closure__[inc.__code__.co_freevars.index("lock")].cell_contents
    held = threading.Event()

    def run():
        with lock:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=run)
    holder.start()
    held.wait(60)
    return holder
"""

HEADER = (
    HOLD
    + """
import os, sys
from atfork.testing import ChildTimeoutError, run_in_child, wait_child

WITH_ATFORK = {with_atfork}
DEADLINE = {deadline}

def enable():
    from atfork.integrations import prometheus
    prometheus.enable()

if WITH_ATFORK and {enable_first}:
    enable()
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector
if WITH_ATFORK and not {enable_first}:
    enable()

assert values.ValueClass._multiprocess, "not in multiprocess mode"
jobs = Counter("jobs", "jobs done")
latency = Histogram("latency_seconds", "latency")
jobs.inc()
latency.observe(0.5)

def report():
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    print("jobs:", registry.get_sample_value("jobs_total"))
    print("observations:", registry.get_sample_value("latency_seconds_count"))
    files = sorted(n for n in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    print("counter files:", sum(n.startswith("counter_") for n in files))
"""
)

# Another thread holds the shared lock of values.py while the main thread
# forks two children, each of which counts a job and observes a latency.
HELD_BY_ANOTHER_THREAD = """
holder = hold(values.ValueClass)

def child():
    jobs.inc()
    latency.observe(1.5)
    return os.getpid()

try:
    pids = [run_in_child(child, timeout=DEADLINE) for _ in range(2)]
    print("children:", len(set(pids) - {os.getpid()}))
except ChildTimeoutError:
    print("child: HUNG")
release.set()
holder.join(60)
jobs.inc()
report()
"""

# The fork is made from inside a metric update (by the file write, standing
# for a signal handler or a garbage collector callback): the forking thread
# holds the lock, and releases it in the child as the update returns. The
# child exits with 3 if the lock was replaced under it.
HELD_BY_THE_FORKING_THREAD = """
inc = values.ValueClass.inc
cell = inc.__closure__[inc.__code__.co_freevars.index("lock")]
original = cell.cell_contents

class ForkingFile:
    def __init__(self, file):
        self.file = file
        self.pid = None
        self.same_lock = None

    def write_value(self, *args):
        self.file.write_value(*args)
        if self.pid is None:
            self.pid = os.fork()
            self.same_lock = cell.cell_contents is original

    def __getattr__(self, name):
        return getattr(self.file, name)

forking = jobs._value._file = ForkingFile(jobs._value._file)
try:
    jobs.inc()
except BaseException as error:
    if forking.pid == 0:
        print("child:", repr(error), file=sys.stderr)
        os._exit(2)
    raise
if forking.pid == 0:
    jobs.inc()
    os._exit(0 if forking.same_lock else 3)
print("child exit code:", wait_child(forking.pid, timeout=DEADLINE))
report()
"""


def run(tmp_path: Path, scenario: str, *, with_atfork: bool, enable_first: bool = True) -> str:
    """The output of ``scenario`` in a fresh interpreter, metrics in ``tmp_path``."""
    deadline = DEADLINE if with_atfork else HANG_DEADLINE
    header = HEADER.format(with_atfork=with_atfork, deadline=deadline, enable_first=enable_first)
    directory = tmp_path / "metrics"
    directory.mkdir()
    done = run_python(
        header + textwrap.dedent(scenario),
        timeout=DEADLINE + 30,
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )
    assert 0 == done.returncode, done.stderr
    return done.stdout


def test_without_atfork_the_child_hangs_on_its_first_update(tmp_path: Path) -> None:
    """Without atfork, a child forked while another thread held the shared
    lock hangs on its first metric update; the parent's metrics are intact."""
    out = run(tmp_path, HELD_BY_ANOTHER_THREAD, with_atfork=False)
    assert "child: HUNG\njobs: 2.0\nobservations: 1.0\ncounter files: 1\n" == out


@pytest.mark.parametrize("enable_first", [True, False], ids=["enabled-first", "imported-first"])
def test_with_the_integration_every_child_counts_once(tmp_path: Path, enable_first: bool) -> None:
    """With the integration, each child's updates work, and the collector
    finds the parent's two jobs and each child's one, each counted once,
    whether prometheus_client was imported before or after enable()."""
    out = run(tmp_path, HELD_BY_ANOTHER_THREAD, with_atfork=True, enable_first=enable_first)
    assert "children: 2\njobs: 4.0\nobservations: 3.0\ncounter files: 3\n" == out


@pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
def test_a_lock_the_forking_thread_holds_is_left_alone(tmp_path: Path, with_atfork: bool) -> None:
    """A fork made inside a metric update leaves the lock in place for the
    forking thread, which releases it in the child: the child counts, with
    and without the integration."""
    out = run(tmp_path, HELD_BY_THE_FORKING_THREAD, with_atfork=with_atfork)
    assert "child exit code: 0\njobs: 3.0\nobservations: 1.0\ncounter files: 2\n" == out


def test_enable_imports_nothing_and_disable_undoes_it() -> None:
    """enable() does not import prometheus_client; disable() gives back its
    MultiProcessValue and unregisters the hook; both are idempotent."""
    done = run_python(
        textwrap.dedent(
            """
            import sys
            import atfork
            from atfork.integrations import prometheus
            prometheus.enable()
            prometheus.enable()
            print("imported:", "prometheus_client" in sys.modules)
            from prometheus_client import values
            original = values.MultiProcessValue.__wrapped__
            print("hooks:", [h.name for h in atfork.hooks() if "prometheus" in h.name])
            prometheus.disable()
            prometheus.disable()
            print("restored:", values.MultiProcessValue is original, prometheus.is_enabled())
            print("hooks:", [h.name for h in atfork.hooks() if "prometheus" in h.name])
            """
        ),
        timeout=DEADLINE,
    )
    assert 0 == done.returncode, done.stderr
    assert (
        "imported: False\n"
        "hooks: ['atfork.integrations.prometheus']\n"
        "restored: True False\n"
        "hooks: []\n"
    ) == done.stdout


def test_value_classes_made_after_enable_are_repaired(tmp_path: Path) -> None:
    """A value class the program makes itself with MultiProcessValue() after
    enable() (with a process identifier of its own) is repaired too."""
    done = run_python(
        HOLD
        + textwrap.dedent(
            """
            import os
            from atfork.integrations import prometheus
            from atfork.testing import run_in_child
            from prometheus_client import Counter, values
            prometheus.enable()
            values.ValueClass = values.MultiProcessValue(lambda: os.getpid())
            jobs = Counter("jobs", "jobs done")
            own = values.ValueClass
            values.ValueClass = values.MultiProcessValue()  # no longer current
            hold(own)
            print("child:", run_in_child(lambda: jobs.inc() or "counted", timeout=30))
            release.set()
            """
        ),
        timeout=DEADLINE,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
    )
    assert 0 == done.returncode, done.stderr
    assert "child: counted\n" == done.stdout


def test_registered_by_name() -> None:
    """ "prometheus" is a built-in name, enabled by atfork.integrations.enable()."""
    assert "prometheus" in atfork.integrations.available()
    atfork.integrations.enable("prometheus")
    try:
        assert atfork_prometheus.is_enabled()
    finally:
        atfork_prometheus.disable()
    assert not atfork_prometheus.is_enabled()
