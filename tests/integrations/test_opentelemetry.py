"""The OpenTelemetry SDK across fork, against a local OTLP/HTTP collector
(telemetry_servers).

The SDK's batch processors re-make their queue, lock, event and thread in
a forked child (``os.register_at_fork``), so each span and log record is
sent once, from the process that made it, without atfork too: regression
tests that atfork's integrations do not break that. What the SDK leaves
alone is its OTLP/HTTP exporters' ``requests.Session``: a child forked
after the parent has sent sends on the parent's keep-alive connection,
which atfork's ``http`` integration keeps from it. Each scenario runs in a
fresh interpreter, without atfork and with its integrations enabled (the
gunicorn one with them only); every span and log record is named by what
made it and the pid of the process that made it.
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
from atfork.testing import run_python

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")
pytest.importorskip(
    "opentelemetry.exporter.otlp.proto.http",
    reason="opentelemetry-exporter-otlp-proto-http is not installed",
)

DEADLINE = 60
# atfork's integrations the scenarios run with, when they do.
INTEGRATIONS = "logging,stdio,threading,random,http,sentry"

SETUP = """
import logging, os
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

provider = TracerProvider()
provider.add_span_processor(
    BatchSpanProcessor(
        OTLPSpanExporter(endpoint=URL + "/v1/traces", timeout=30),
        schedule_delay_millis=DELAY,
    )
)
trace.set_tracer_provider(provider)
logs = LoggerProvider()
logs.add_log_record_processor(
    BatchLogRecordProcessor(
        OTLPLogExporter(endpoint=URL + "/v1/logs", timeout=30), schedule_delay_millis=DELAY
    )
)
log = logging.getLogger("app")
log.addHandler(LoggingHandler(logger_provider=logs))
log.setLevel(logging.INFO)
log.propagate = False
tracer = trace.get_tracer("app")

def make(label):
    # One span and one log record, named by label and this process's pid.
    name = "{}-{}".format(label, os.getpid())
    with tracer.start_as_current_span("span-" + name):
        log.info("log-" + name)
    return os.getpid()

def flush():
    provider.force_flush()
    logs.force_flush()
"""

PRELUDE = """
import json, os, sys, threading, time, urllib.request
from atfork.testing import wait_child

URL = {url!r}
DELAY = {delay}
if {with_atfork}:
    import atfork.integrations
    atfork.integrations.enable(*{integrations!r}.split(","))
{setup}

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

def fork(child):
    # child() in a forked child, which exits through the interpreter's
    # shutdown (the providers' shutdown at exit flushes); its pid.
    pid = os.fork()
    if pid == 0:
        child()
        sys.exit(0)
    return pid

def report(result):
    print("RESULT " + json.dumps(result), flush=True)
"""

# The parent's spans wait in the batch (the export delay is a minute) when
# it forks three children, which make their own and exit.
BACKLOG = """
make("first")
make("second")
pids = [fork(lambda: make("child")) for _ in range(3)]
codes = [wait_child(pid, timeout=30) for pid in pids]
report({"codes": codes, "pid": os.getpid(), "children": pids})
"""

# The worker threads are inside an export to the slow collector (holding
# their export locks) when the main thread forks two children.
EXPORTING = """
control("slow")
make("first")
flusher = threading.Thread(target=flush)
flusher.start()
until(lambda: control("held") >= 1, "an export held")
make("second")
pids = [fork(lambda: make("child")) for _ in range(2)]
control("release")
flusher.join(30)
codes = [wait_child(pid, timeout=30) for pid in pids]
report({"codes": codes, "pid": os.getpid(), "children": pids})
"""

# A multiprocessing pool of three forked workers, each task flushing (a pool
# worker exits without the interpreter's shutdown). The parent's span waits
# in the batch until its exit: its exporters have not connected when the
# workers fork (see EXPORTED).
POOL = """
import multiprocessing

def task(label):
    make(label)
    flush()
    return os.getpid()

make("first")
with multiprocessing.get_context("fork").Pool(3) as pool:
    pids = pool.map(task, ["task{}".format(i) for i in range(6)], chunksize=1)
report({"codes": [0], "pid": os.getpid(), "tasks": pids})
"""


# The parent has sent its span and log (its exporters' connections are idle
# in their sessions' pools) when it forks a child, which sends its own.
EXPORTED = """
make("first")
flush()
pid = fork(lambda: (make("child"), flush()))
report({"codes": [wait_child(pid, timeout=30)], "pid": os.getpid(), "children": [pid]})
"""


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    with collect() as found:
        yield found


def scenario(
    collector: tuple[Collector, str], body: str, *, with_atfork: bool, delay: int = 200
) -> tuple[dict[str, Any], Collector]:
    """Run ``body`` after the prelude in a fresh interpreter; its report."""
    found, url = collector
    prelude = PRELUDE.format(
        url=url, delay=delay, with_atfork=with_atfork, integrations=INTEGRATIONS, setup=SETUP
    )
    run = run_python(prelude + textwrap.dedent(body), timeout=DEADLINE)
    assert not run.timed_out, f"the scenario hung:\n{run.stderr}"
    assert 0 == run.returncode, run.stderr
    line = next(x for x in reversed(run.stdout.splitlines()) if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :]), found


def names_of(made: list[str]) -> list[str]:
    return [f"{kind}-{name}" for name in made for kind in ("span", "log")]


def arrived(collector: Collector, names: list[str]) -> dict[str, int]:
    """How often each span and log record arrived, once all of ``names``
    did (or the deadline passed)."""
    counts = collector.wait_for(names)
    return {name: counts[name] for name in counts if name.startswith(("span-", "log-"))}


def parent_and_children(result: dict[str, Any], parent: tuple[str, ...]) -> list[str]:
    made = [f"{label}-{result['pid']}" for label in parent]
    made += [f"child-{pid}" for pid in result["children"]]
    return names_of(made)


@pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
def test_a_batch_pending_at_the_fork_is_sent_once_by_the_parent(
    collector: tuple[Collector, str], with_atfork: bool
) -> None:
    """The parent's spans and logs still in the batch at the fork arrive
    once (from the parent, at its exit), and each child's own once, from
    the child, at its exit."""
    result, found = scenario(collector, BACKLOG, with_atfork=with_atfork, delay=60000)
    assert [0, 0, 0] == result["codes"]
    names = parent_and_children(result, ("first", "second"))
    assert dict.fromkeys(names, 1) == arrived(found, names)


@pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
def test_a_fork_during_an_export_sends_everything_once(
    collector: tuple[Collector, str], with_atfork: bool
) -> None:
    """A fork while the worker threads export to a slow collector (their
    export locks held): no child hangs, and every span and log arrives
    once, from the process that made it."""
    result, found = scenario(collector, EXPORTING, with_atfork=with_atfork)
    assert [0, 0] == result["codes"]
    names = parent_and_children(result, ("first", "second"))
    assert dict.fromkeys(names, 1) == arrived(found, names)


@pytest.mark.parametrize("with_atfork", [False, True], ids=["without", "with"])
def test_a_fork_pool_sends_each_span_once(
    collector: tuple[Collector, str], with_atfork: bool
) -> None:
    """A fork pool whose tasks flush sends each task's span and log once,
    from the worker that ran it."""
    result, found = scenario(collector, POOL, with_atfork=with_atfork, delay=60000)
    made = [f"first-{result['pid']}"]
    made += [f"task{i}-{pid}" for i, pid in enumerate(result["tasks"])]
    names = names_of(made)
    assert dict.fromkeys(names, 1) == arrived(found, names)


def connections(result: dict[str, Any], found: Collector) -> tuple[set[int], set[int]]:
    """The connections the parent's and the child's spans and logs came on."""
    names = parent_and_children(result, ("first",))
    assert dict.fromkeys(names, 1) == arrived(found, names)
    parent, child = f"first-{result['pid']}", f"child-{result['children'][0]}"
    on = found.connections
    return on[f"span-{parent}"] | on[f"log-{parent}"], on[f"span-{child}"] | on[f"log-{child}"]


def test_without_atfork_a_child_sends_on_the_parents_connection(
    collector: tuple[Collector, str],
) -> None:
    """The exporters' sessions keep the parent's connections alive, and the
    child's next export goes out on one of them: the two processes share a
    connection, and whichever reads first takes the other's answer."""
    result, found = scenario(collector, EXPORTED, with_atfork=False)
    assert [0] == result["codes"]
    parent, child = connections(result, found)
    assert parent & child


def test_with_the_http_integration_a_child_sends_on_its_own_connection(
    collector: tuple[Collector, str],
) -> None:
    """With atfork's integrations (``http`` among them) the child's
    exporters open connections of their own; the parent's are untouched."""
    result, found = scenario(collector, EXPORTED, with_atfork=True)
    assert [0] == result["codes"]
    parent, child = connections(result, found)
    assert not parent & child


INSTALLED = "site-packages" in atfork.__file__  # atfork.pth is active only when installed

APP = """
import json

DELAY = 200
{setup}
make("master")  # at import, in the master: in the batch when the workers fork
served = []

def app(environ, start_response):
    meet(ARRIVED, 3)
    make("request{{}}".format(len(served)))
    served.append(True)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({{"pid": os.getpid()}}).encode()]
"""


@pytest.mark.skipif(GUNICORN is None, reason="gunicorn is not installed")
@pytest.mark.skipif(not INSTALLED, reason="atfork.pth is only active when installed")
def test_gunicorn_preload_workers_send_their_own_spans_once(
    collector: tuple[Collector, str], tmp_path: Path
) -> None:
    """gunicorn --preload with three workers: the master's span and log
    (made at import) and each worker's (one per request) arrive once each,
    and every worker boots and exits (SIGTERM: the flush at exit), with
    atfork's integrations (without them, a worker's spans are lost in some
    runs: when the master has sent before the workers fork, they all share
    its keep-alive connection and send on it at once when they exit)."""
    found, url = collector
    app = APP.format(setup=SETUP)
    master, answers, log = preload(tmp_path, url, app, INTEGRATIONS)
    assert 3 == len(answers), log
    # Each worker has flushed at its exit, before the master's ended.
    names = names_of([f"master-{master}"] + [f"request0-{pid}" for pid in answers])
    counts = arrived(found, names)
    assert set() == set(names) - set(counts), (counts, log)
    assert {1} == set(counts.values()), counts
