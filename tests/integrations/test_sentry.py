"""sentry-sdk across fork (atfork.integrations.sentry), against a local
envelope endpoint (telemetry_servers).

Each scenario runs in a fresh interpreter, once without atfork, showing the
failure, and once with the integration; every event and log carries the
name of what made it and the pid of the process that made it, and the
collector counts how often each arrived.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from telemetry_servers import GUNICORN, Collector, collect, preload

import atfork
import atfork.integrations
from atfork.integrations import sentry as atfork_sentry
from atfork.testing import run_python

pytest.importorskip("sentry_sdk", reason="sentry-sdk is not installed")

DEADLINE = 60
# The seconds sentry-sdk's flush at exit waits for what is queued, at most.
SHUTDOWN_TIMEOUT = 8
# atfork's other integrations, enabled beside this one where it is asked for.
OTHERS = "logging,stdio,threading,random,http"

PRELUDE = """
import json, os, sys, threading, time, urllib.request
from atfork.testing import ChildTimeoutError, wait_child

URL = {url!r}
if {with_atfork}:
    import atfork.integrations
    atfork.integrations.enable(*{integrations!r}.split(","))
import sentry_sdk

sentry_sdk.init(
    dsn="http://public@" + URL.split("//")[1] + "/1",
    enable_logs=True,
    shutdown_timeout={shutdown_timeout},
    _experiments={{"transport_compression_level": 0}},
)

def control(what):
    with urllib.request.urlopen(URL + "/_" + what, timeout=30) as answer:
        return json.loads(answer.read())["held"]

def until(condition, what):
    # Poll a condition another process brings about, with a deadline.
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("never: " + what)
        time.sleep(0.01)

def make(label):
    # One event and one log, named by label and this process's pid.
    name = "{{}}-{{}}".format(label, os.getpid())
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("name", "event-" + name)
        sentry_sdk.capture_message(name)
    sentry_sdk.logger.info("log-" + name)
    return os.getpid()

def fork(child):
    # child() in a forked child, which exits through the interpreter's
    # shutdown (sentry-sdk's flush at exit runs); its pid.
    pid = os.fork()
    if pid == 0:
        child()
        sys.exit(0)
    return pid

def report(result):
    print("RESULT " + json.dumps(result), flush=True)
"""

# The endpoint is slow: the parent's first envelope is being sent (its
# answer held) and the next ones wait in the worker's queue when the parent
# forks three children that each make an event and a log, then exit.
BACKLOG = """
control("slow")
make("first")
make("second")
make("third")
until(lambda: control("held") >= 1, "the first envelope held")
pids = [fork(lambda: make("child")) for _ in range(3)]
control("release")
start = time.monotonic()
codes = [wait_child(pid, timeout=30) for pid in pids]
report({"codes": codes, "exits": time.monotonic() - start, "pid": os.getpid(), "children": pids})
"""

# Another thread flushes (holding the worker's lock while it waits for the
# slow endpoint) when the main thread forks a child that makes an event.
FLUSHING = """
control("slow")
make("first")
flusher = threading.Thread(target=sentry_sdk.flush, args=(30,))
flusher.start()
until(lambda: control("held") >= 1, "the first envelope held")
until(lambda: sentry_sdk.get_client().transport._worker._lock.locked(), "the flush")
pid = fork(lambda: make("child"))
control("release")
flusher.join(30)
try:
    code = wait_child(pid, timeout={child_deadline})
except ChildTimeoutError:
    code = "HUNG"
report({{"codes": [code], "pid": os.getpid(), "children": [pid]}})
"""

# A multiprocessing pool of three forked workers, each task flushing (a pool
# worker exits without the interpreter's shutdown).
POOL = """
import multiprocessing

def task(label):
    make(label)
    sentry_sdk.flush(30)
    return os.getpid()

make("first")
with multiprocessing.get_context("fork").Pool(3) as pool:
    pids = pool.map(task, ["task{}".format(i) for i in range(6)], chunksize=1)
report({"codes": [0], "pid": os.getpid(), "children": pids})
"""


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    with collect() as found:
        yield found


def scenario(
    collector: tuple[Collector, str], body: str, *, with_atfork: bool, integrations: str = "sentry"
) -> tuple[dict[str, Any], Collector]:
    """Run ``body`` after the prelude in a fresh interpreter; its report."""
    found, url = collector
    prelude = PRELUDE.format(
        url=url,
        with_atfork=with_atfork,
        integrations=integrations,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    run = run_python(prelude + textwrap.dedent(body), timeout=DEADLINE)
    assert not run.timed_out, f"the scenario hung:\n{run.stderr}"
    assert 0 == run.returncode, run.stderr
    line = next(x for x in reversed(run.stdout.splitlines()) if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :]), found


def names_of(result: dict[str, Any], parent: tuple[str, ...], child: str) -> list[str]:
    """Every event and log the scenario made, each expected once."""
    made = [f"{label}-{result['pid']}" for label in parent]
    made += [f"{child}-{pid}" for pid in sorted(set(result["children"]))]
    return [f"{kind}-{name}" for name in made for kind in ("event", "log")]


def arrived(collector: Collector, names: list[str]) -> dict[str, int]:
    """How often each event and log arrived, once all of ``names`` did
    (or the deadline passed)."""
    counts = collector.wait_for(names)
    return {name: counts[name] for name in counts if name.startswith(("event-", "log-"))}


def test_without_atfork_each_child_sends_the_parents_backlog_again(
    collector: tuple[Collector, str],
) -> None:
    """Without atfork, the events the parent had queued at the fork arrive
    four times (from the parent and from each of three children), and each
    child waits its whole shutdown_timeout at exit for the envelope the
    parent was sending."""
    result, found = scenario(collector, BACKLOG, with_atfork=False)
    assert [0, 0, 0] == result["codes"]
    counts = arrived(found, names_of(result, ("first", "second", "third"), "child"))
    parent = result["pid"]
    assert 4 == counts[f"event-second-{parent}"]
    assert 4 == counts[f"event-third-{parent}"]
    assert 1 == counts[f"event-first-{parent}"]
    assert result["exits"] >= SHUTDOWN_TIMEOUT


@pytest.mark.parametrize("integrations", ["sentry", f"sentry,{OTHERS}"])
def test_with_the_integration_every_event_arrives_once(
    collector: tuple[Collector, str], integrations: str
) -> None:
    """With the integration (alone, or with atfork's others), each event and
    log arrives once, from the process that made it: the parent sends its
    backlog, the children only their own, and no child waits for the
    parent's envelope at exit."""
    result, found = scenario(collector, BACKLOG, with_atfork=True, integrations=integrations)
    assert [0, 0, 0] == result["codes"]
    names = names_of(result, ("first", "second", "third"), "child")
    assert dict.fromkeys(names, 1) == arrived(found, names)
    assert result["exits"] < SHUTDOWN_TIMEOUT


def test_without_atfork_a_child_forked_during_a_flush_hangs(
    collector: tuple[Collector, str],
) -> None:
    """Without atfork, a child forked while another thread flushed inherits
    the worker's lock held, and hangs on its first event (killed at the
    deadline)."""
    result, _ = scenario(collector, FLUSHING.format(child_deadline=5), with_atfork=False)
    assert ["HUNG"] == result["codes"]


def test_with_the_integration_a_child_forked_during_a_flush_sends(
    collector: tuple[Collector, str],
) -> None:
    """With the integration, that child sends its event and log, once, and
    exits; the parent's arrive once."""
    result, found = scenario(collector, FLUSHING.format(child_deadline=30), with_atfork=True)
    assert [0] == result["codes"]
    names = names_of(result, ("first",), "child")
    assert dict.fromkeys(names, 1) == arrived(found, names)


def test_a_fork_pool_sends_each_event_once(collector: tuple[Collector, str]) -> None:
    """A fork pool whose tasks flush sends each task's event and log once,
    from the worker that ran it, with atfork's integrations (without them,
    some of a worker's events are lost in some runs: the workers share the
    parent's keep-alive connection and read one another's answers)."""
    result, found = scenario(collector, POOL, with_atfork=True, integrations=f"sentry,{OTHERS}")
    pids = result["children"]
    names = [f"{kind}-first-{result['pid']}" for kind in ("event", "log")]
    names += [f"{kind}-task{i}-{pid}" for i, pid in enumerate(pids) for kind in ("event", "log")]
    assert dict.fromkeys(names, 1) == arrived(found, names)


INSTALLED = "site-packages" in atfork.__file__  # atfork.pth is active only when installed

APP = """
import json, os, sentry_sdk

sentry_sdk.init(
    dsn="http://public@" + URL.split("//")[1] + "/1",
    enable_logs=True,
    _experiments={"transport_compression_level": 0},
)

def make(label):
    name = "{}-{}".format(label, os.getpid())
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("name", "event-" + name)
        sentry_sdk.capture_message(name)
    sentry_sdk.logger.info("log-" + name)

make("master")  # at import, in the master: queued when the workers fork

served = []

def app(environ, start_response):
    meet(ARRIVED, 3)
    make("request{}".format(len(served)))
    served.append(True)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"pid": os.getpid()}).encode()]
"""


@pytest.mark.skipif(GUNICORN is None, reason="gunicorn is not installed")
@pytest.mark.skipif(not INSTALLED, reason="atfork.pth is only active when installed")
def test_gunicorn_preload_workers_send_their_own_events_once(
    collector: tuple[Collector, str], tmp_path: Path
) -> None:
    """gunicorn --preload with three workers: the master's event (made at
    import) and each worker's (one per request) arrive once each, the
    master's from the master only, and every
    worker boots and exits (SIGTERM: the flush at exit), with atfork's
    integrations (without them, a worker's first events are lost in some
    runs, and its exit waits for the master's envelope)."""
    found, url = collector
    master, answers, log = preload(tmp_path, url, APP, f"sentry,{OTHERS}")
    assert 3 == len(answers), log
    assert "Worker exiting" in log
    # Each worker has flushed at its exit, before the master's ended.
    names = [f"{kind}-master-{master}" for kind in ("event", "log")]
    names += [f"{kind}-request0-{pid}" for pid in answers for kind in ("event", "log")]
    counts = arrived(found, names)
    assert set() == set(names) - set(counts), (counts, log)
    assert {1} == set(counts.values()), counts


def test_enable_imports_nothing_and_disable_undoes_it() -> None:
    """enable() does not import sentry_sdk; disable() gives BackgroundWorker
    back its own attributes; both are idempotent."""
    done = run_python(
        textwrap.dedent(
            """
            import sys
            from atfork.integrations import sentry
            sentry.enable()
            sentry.enable()
            print("imported:", "sentry_sdk" in sys.modules)
            from sentry_sdk.worker import BackgroundWorker
            worker = BackgroundWorker()
            print("per process:", sorted(vars(BackgroundWorker).keys() & {"_queue", "_lock"}))
            sentry.disable()
            sentry.disable()
            print("restored:", sorted(vars(BackgroundWorker).keys() & {"_queue", "_lock"}))
            print("still works:", worker.submit(lambda: None), sentry.is_enabled())
            worker.flush(5)
            """
        ),
        timeout=DEADLINE,
    )
    assert 0 == done.returncode, done.stderr
    assert (
        "imported: False\nper process: ['_lock', '_queue']\nrestored: []\nstill works: True False\n"
    ) == done.stdout


def test_registered_by_name() -> None:
    """ "sentry" is a built-in name, enabled by atfork.integrations.enable()."""
    assert "sentry" in atfork.integrations.available()
    atfork.integrations.enable("sentry")
    try:
        assert atfork_sentry.is_enabled()
    finally:
        atfork_sentry.disable()
    assert not atfork_sentry.is_enabled()
