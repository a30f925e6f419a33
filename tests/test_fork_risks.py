"""atfork.fork_risks(): the fork risks atfork cannot fix, each found with the real
library in a fresh interpreter, and not found without it (atfork._risks)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
from free_threading import FREE_THREADED, INTERPRETER_SKIP, NEEDS_GIL

import atfork
from atfork.testing import run_python

# The libraries a check looks at, and atfork's integrations: none of them
# may be imported by fork_risks().
WATCHED = ("asyncio", "atfork.integrations", "gevent", "grpc", "numpy", "threadpoolctl", "torch")

PRELUDE = f"""
import json, sys, threading
import atfork

def report():
    print(json.dumps({{
        "risks": [risk._asdict() for risk in atfork.fork_risks()],
        "imported": sorted(m for m in {WATCHED!r} if m in sys.modules),
    }}), flush=True)
"""

# Generous: the machine may be loaded, and grpc and torch import slowly.
DEADLINE = 120.0


def reports(body: str, *, first: str = "", env: dict[str, str] | None = None) -> list[Any]:
    """Run ``first``, the prelude, then ``body`` in a fresh interpreter; each
    ``report()`` it calls, in order."""
    source = textwrap.dedent(first) + PRELUDE + textwrap.dedent(body)
    run = run_python(source, timeout=DEADLINE, env=env)
    assert 0 == run.returncode, run.stderr + run.stack
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def of_kind(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [risk for risk in report["risks"] if risk["kind"] == kind]


def need(module: str) -> None:
    """Skip unless ``module`` is installed (looked up, not imported)."""
    if FREE_THREADED and module in NEEDS_GIL:
        pytest.skip(NEEDS_GIL[module])
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pyproject.toml's test extras)")


def test_a_bare_interpreter_has_no_risk_and_imports_nothing() -> None:
    """In a fresh interpreter nothing is found and no library is imported."""
    [report] = reports("report()\n")
    assert {"risks": [], "imported": []} == report


def test_the_risk_type_is_a_typed_tuple() -> None:
    """A ForkRisk has kind, what and advice, and is named after the package."""
    risk = atfork.ForkRisk("threads", "what", "advice")
    assert ("threads", "what", "advice") == (risk.kind, risk.what, risk.advice)
    assert ("kind", "what", "advice") == atfork.ForkRisk._fields
    assert "atfork" == atfork.ForkRisk.__module__


# -- threads ----------------------------------------------------------------------


def test_other_threads_are_a_risk_until_they_end() -> None:
    """A thread waiting on an Event is named; once it has ended it is not."""
    alive, ended = reports(
        """
        stop = threading.Event()
        waiter = threading.Thread(target=stop.wait, args=(60,), name="waiter")
        waiter.start()
        report()
        stop.set()
        waiter.join(60)
        report()
        """
    )
    [risk] = of_kind(alive, "threads")
    assert risk["what"].startswith("1 other thread(s) alive (waiter):")
    assert "post_fork" in risk["advice"]
    assert "tracked objects" not in risk["what"]
    assert ([], []) == (ended["risks"], ended["imported"])


def test_a_tracked_lock_another_thread_holds_is_named() -> None:
    """A lock given to threading.track() and held by another thread is named."""
    [report] = reports(
        """
        from atfork.integrations import threading as atfork_threading
        lock = atfork_threading.track(threading.Lock())
        held, stop = threading.Event(), threading.Event()

        def hold():
            with lock:
                held.set()
                stop.wait(60)

        holder = threading.Thread(target=hold, name="holder")
        holder.start()
        assert held.wait(60)
        report()
        stop.set()
        holder.join(60)
        """
    )
    [risk] = of_kind(report, "threads")
    assert "(holder)" in risk["what"]
    assert "tracked objects locked now" in risk["what"]
    assert "_thread.lock" in risk["what"]


# -- gRPC -------------------------------------------------------------------------

GRPC = """
import gc, os
if not FORK_SUPPORT:
    os.environ.pop("GRPC_ENABLE_FORK_SUPPORT", None)
import grpc
from concurrent import futures
report()  # imported, with no channel or server

def echo(request, context):
    return request

server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler(
        "atfork.Test", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    ),)
)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
assert b"hi" == channel.unary_unary("/atfork.Test/Echo")(b"hi", timeout=60)
report()
server.stop(None).wait(60)
report()  # the channel alone
channel.close()
"""


@pytest.mark.parametrize("fork_support", [False, True])
def test_grpc_channels_and_servers(fork_support: bool) -> None:
    """A gRPC server and a channel to it are a risk, with gRPC's fork support on or
    off (the advice differs); a stopped server is not; grpc imported alone is none."""
    need("grpc")
    env = {"GRPC_ENABLE_FORK_SUPPORT": "true"} if fork_support else None
    imported, both, channel = reports(f"FORK_SUPPORT = {fork_support}\n{GRPC}", env=env)
    assert [] == of_kind(imported, "grpc")
    assert "grpc" in imported["imported"]
    [risk] = of_kind(both, "grpc")
    assert risk["what"].startswith("gRPC: 1 channel(s) and 1 server(s) alive")
    assert risk["advice"].startswith("create gRPC channels and servers only after the fork")
    if fork_support:
        assert "with gRPC's fork support on" in risk["what"]
        assert "a server is not covered" in risk["what"]
    else:
        assert "without gRPC's fork support" in risk["what"]
        assert "GRPC_ENABLE_FORK_SUPPORT=true and GRPC_POLL_STRATEGY=poll" in risk["advice"]
    [risk] = of_kind(channel, "grpc")
    assert risk["what"].startswith("gRPC: 1 channel(s) alive")


# -- native thread pools ------------------------------------------------------------

BLAS = """
import numpy
a = numpy.ones((200, 200))
numpy.dot(a, a)
report()
"""


def test_a_blas_pool_found_without_threadpoolctl_and_with_it() -> None:
    """After a BLAS call numpy's OpenBLAS pool is a risk: found in the process's
    libraries when threadpoolctl is not imported (and it is not imported), and
    through threadpoolctl when the program imported it."""
    need("numpy")
    need("threadpoolctl")
    alone, counted = reports(
        BLAS + "import threadpoolctl\nreport()\n", env={"OPENBLAS_NUM_THREADS": "2"}
    )
    assert "threadpoolctl" not in alone["imported"]
    [risk] = of_kind(alone, "native-threadpool")
    assert "openblas" in risk["what"]
    assert "thread(s) Python does not know" in risk["what"]
    assert "threadpool_limits(1)" in risk["advice"]
    [risk] = of_kind(counted, "native-threadpool")
    assert "openblas (blas, 2 threads)" in risk["what"]


@pytest.mark.parametrize("threadpoolctl", [False, True])
def test_a_one_thread_blas_is_no_risk(threadpoolctl: bool) -> None:
    """With OPENBLAS_NUM_THREADS=1 the pool starts no thread: no risk."""
    need("numpy")
    need("threadpoolctl")
    first = "import threadpoolctl\n" if threadpoolctl else ""
    [report] = reports(BLAS, first=first, env={"OPENBLAS_NUM_THREADS": "1"})
    assert [] == report["risks"]


# -- torch, gevent, asyncio -----------------------------------------------------------

HAVE_TORCH = importlib.util.find_spec("torch") is not None

if HAVE_TORCH:  # tox installs torch on CPython 3.11 only (see test_random_torch.py)

    def test_torch_without_cuda_is_no_risk() -> None:
        """torch imported, and a tensor made on the CPU, is no cuda risk."""
        [report] = reports("import torch\ntorch.ones(3).sum()\nreport()\n")
        assert "torch" in report["imported"]
        assert [] == of_kind(report, "cuda")

    def test_torch_with_cuda_initialised() -> None:
        """torch with CUDA initialised is a risk."""
        run = run_python("import torch; print(torch.cuda.is_available())", timeout=DEADLINE)
        if run.stdout.strip() != "True":
            pytest.skip(
                f"{INTERPRETER_SKIP}the torch installed for it is CPU-only (or finds no GPU): "
                "CUDA cannot be initialised"
            )
        [report] = reports("import torch\ntorch.cuda.init()\nreport()\n")
        [risk] = of_kind(report, "cuda")
        assert "spawn" in risk["advice"]


def test_gevent_monkey_patching() -> None:
    """gevent's monkey-patching is a risk; gevent imported without it is none."""
    need("gevent")
    [patched] = reports("report()\n", first="from gevent import monkey\nmonkey.patch_all()\n")
    [risk] = of_kind(patched, "gevent")
    assert risk["what"].startswith("gevent has monkey-patched ")
    assert "os" in risk["what"].split(":")[0].replace(",", " ").split()
    assert "gevent.hub.reinit()" in risk["advice"]
    [imported] = reports("import gevent, gevent.monkey\nreport()\n")
    assert "gevent" in imported["imported"]
    assert [] == of_kind(imported, "gevent")


def test_a_running_asyncio_loop() -> None:
    """fork_risks() called inside a coroutine finds the running loop; after it, none."""
    inside, after = reports(
        """
        import asyncio

        async def main():
            report()

        asyncio.run(main())
        report()
        """
    )
    [risk] = of_kind(inside, "asyncio-loop")
    assert "an asyncio loop is running in this thread" in risk["what"]
    assert [] == after["risks"]


# -- doctor -----------------------------------------------------------------------------

GRPC_APP = """
import grpc

channel = grpc.insecure_channel("127.0.0.1:1")
"""


def test_doctor_reports_a_grpc_channel(
    tmp_path: Path, atfork_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """doctor's report of a program with a gRPC channel holds the grpc risk, in its
    JSON and in its own section of the text."""
    need("grpc")
    (tmp_path / "app.py").write_text(GRPC_APP)
    done = atfork_cli("doctor", "--json", "app.py", env={"PYTHONUNBUFFERED": ""})
    report = json.loads(done.stdout)
    [risk] = [r for r in report["risks"] if r["kind"] == "grpc"]
    assert risk["what"].startswith("gRPC: 1 channel(s) alive")
    assert set(risk) == {"kind", "what", "advice"}
    done = atfork_cli("doctor", "app.py", env={"PYTHONUNBUFFERED": ""})
    assert "Fork risks atfork cannot fix" in done.stdout, done.stderr
    assert "[grpc] gRPC: 1 channel(s) alive" in done.stdout


def test_risks_are_found_in_this_process_too() -> None:
    """fork_risks() is a plain call: in the test process it returns ForkRisks."""
    risks = atfork.fork_risks()
    assert all(isinstance(risk, atfork.ForkRisk) for risk in risks)
    assert sys.modules["atfork"] is atfork
