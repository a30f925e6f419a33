"""With gevent monkey-patched, atfork's child callbacks run exactly once in
each child: for the patched ``os.fork`` (gevent's, which forks and then
reinitialises its hub), ``gevent.fork``, multiprocessing's ``fork`` start
method, and also when the child reinitialises the hub again or calls
``atfork.check()``. Real gevent, each case in a fresh interpreter."""

from __future__ import annotations

import json
import textwrap

import pytest
from free_threading import FREE_THREADED, NEEDS_GIL

from atfork.testing import run_python

if FREE_THREADED:
    pytestmark = pytest.mark.skip(reason=NEEDS_GIL["gevent"])
else:
    pytest.importorskip("gevent", reason="gevent is not installed")

PROGRAM = """
from gevent import monkey
monkey.patch_all()

import json, multiprocessing, os, sys
import gevent, gevent.hub

# gevent's waitpid() learns of a child's exit from its SIGCHLD handler, which
# it installs at its first child watcher: the patched os.fork starts that
# after the fork, and a first child that has exited before then is never
# reaped (gevent #622). A program that has run a subprocess has the handler
# already; this one installs it first.
gevent.get_hub().loop.install_sigchld()
import atfork, atfork.integrations
from atfork.testing import wait_child

atfork.integrations.enable("threading", "logging", "stdio")
ran = []
atfork.atfork(child=lambda: ran.append(os.getpid()), name="counts its runs")

def in_child():
    first = list(ran)
    gevent.hub.reinit()  # what gevent does after its fork; again here
    gevent.sleep(0)  # the child's hub runs
    atfork.check()  # nothing to do: the callbacks ran in this process
    return {"first": first, "last": list(ran), "pid": os.getpid()}

def report(result):
    sys.stdout.write(json.dumps(result) + "\\n")
    sys.stdout.flush()

def through_fork(fork):
    read, write = os.pipe()
    pid = fork()
    if pid == 0:
        try:
            os.write(write, json.dumps(in_child()).encode())
        finally:
            os._exit(0)
    os.close(write)
    wait_child(pid, timeout=30)  # a hung child is killed at the deadline
    with os.fdopen(read) as answer:
        return json.loads(answer.read())

def target(queue):
    queue.put(in_child())

if MODE == "os.fork":
    report(through_fork(os.fork))
elif MODE == "gevent.fork":
    report(through_fork(gevent.fork))
else:
    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    process = context.Process(target=target, args=(queue,))
    process.start()
    report(queue.get())
    process.join()
"""


@pytest.mark.parametrize("mode", ["os.fork", "gevent.fork", "multiprocessing"])
def test_child_callbacks_run_once_per_child(mode: str) -> None:
    source = f"MODE = {mode!r}\n" + textwrap.dedent(PROGRAM)
    result = run_python(source, timeout=60)
    assert 0 == result.returncode, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    assert [found["pid"]] == found["first"] == found["last"]


# The child ends before the patched os.fork starts watching it, in a process
# that has never installed gevent's SIGCHLD handler: gevent's waitpid() never
# reports it.
UNREPORTED = """
from gevent import monkey
monkey.patch_all()

import json, os
import atfork
from atfork.testing import ChildTimeoutError, wait_child

def until_a_child_has_ended():
    os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)  # it stays unreaped

hook = atfork.atfork(parent=until_a_child_has_ended, name="waits for the child's end")
pid = os.fork()
if pid == 0:
    os._exit(0)
hook.unregister()
try:
    outcome = "exit code {}".format(wait_child(pid, timeout=1))
except ChildTimeoutError:
    outcome = "timed out"
print(json.dumps(outcome))
"""


def test_wait_child_returns_for_a_child_gevent_never_reports() -> None:
    """wait_child ends at its deadline (plus a few seconds to reap) for a
    child whose end gevent's waitpid never reports, rather than waiting for
    ever to reap the child it killed."""
    result = run_python(textwrap.dedent(UNREPORTED), timeout=30)
    assert not result.timed_out, f"wait_child hung:\n{result.stderr}"
    assert 0 == result.returncode, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) in ("timed out", "exit code 0")
