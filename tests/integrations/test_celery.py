"""Celery's prefork pool, with a RabbitMQ broker: the worker's master imports
the application, then forks the pool's children. A thread of the master logs
all the time through a handler with a lock and a file of its own, and the
tasks log through the same handler in the children. With ATFORK_INTEGRATIONS
set (read at interpreter start-up by atfork.pth) every task completes and
SIGTERM stops the worker; without it the pool's children hang."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from db_servers import AMQP, require

import atfork
from atfork.testing import run_python

CELERY = shutil.which("celery", path=os.path.dirname(sys.executable))
INSTALLED = "site-packages" in atfork.__file__  # atfork.pth is active only when installed
BROKER = "amqp://{user}:{password}@{host}:{port}//".format(**AMQP)
# logging re-creates the handler's own lock in each child: it is the one
# this worker needs. stdio and threading are what a deployment would enable
# with it; they must not get in the way.
INTEGRATIONS = "logging,stdio,threading"
CHILDREN = 3
TASKS = 60

# Settings shared by the worker and the client; the queue is the test's own.
CONFIG = """
from kombu import Queue
broker_url = BROKER
result_backend = "rpc://"
result_expires = 60  # the client's reply queue too, in seconds
task_default_queue = QUEUE
# RabbitMQ deletes the queue a minute after its last use, should the test's
# own deletion not run.
task_queues = [Queue(QUEUE, queue_arguments={"x-expires": 60000})]
broker_connection_retry_on_startup = True
worker_enable_remote_control = False  # no control queue either
"""

APP = """
import logging, os, threading, time
from celery import Celery
from celery.signals import worker_ready, worker_shutdown


class PrivateFileHandler(logging.Handler):
    # A lock of its own, taken in emit(), and a file of its own: the standard
    # library resets neither in a child.

    def __init__(self, path):
        super().__init__()
        self._lock = threading.Lock()
        self._f = open(path, "a")

    def emit(self, record):
        line = self.format(record) + "\\n"
        with self._lock:
            hold = getattr(record, "hold", None)
            if hold is not None:  # the lock stays held until the worker is ready
                holding.set()
                hold.wait(120)
            self._f.write(line)
            self._f.flush()


handler = PrivateFileHandler(LOG)
log = logging.getLogger("atfork.test.celery")
log.propagate = False
log.setLevel(logging.INFO)
log.addHandler(handler)
probe = os.open(PROBE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
holding, ready, stop = threading.Event(), threading.Event(), threading.Event()


def chatter():
    # The master's first record holds the handler's lock while the pool
    # forks every child; then one record every 5 ms until the worker stops.
    pid = os.getpid()
    log.info("master pid=%d n=0 held", pid, extra={"hold": ready})
    n = 0
    while not stop.wait(0.005):
        n += 1
        log.info("master pid=%d n=%d", pid, n)


thread = threading.Thread(target=chatter, name="chatter", daemon=True)
thread.start()
if not holding.wait(60):
    raise RuntimeError("the logging thread did not take the handler's lock")


@worker_ready.connect
def _ready(sender, **kwargs):
    # A timer every 0.1 s: the master's event loop then sees SIGTERM within
    # 0.1 s instead of up to 10 s.
    sender.timer.call_repeatedly(0.1, lambda: None)
    ready.set()


@worker_shutdown.connect
def _shutdown(**kwargs):
    stop.set()
    thread.join(10)


app = Celery("celery_app")
app.config_from_object("celery_config")


@app.task
def work(n):
    pid = os.getpid()
    # No thread of this child holds the lock now (the child runs one task at
    # a time): held means held at the fork, for ever.
    os.write(probe, f"start pid={pid} n={n} locked={handler._lock.locked()}\\n".encode())
    time.sleep(0.05)  # keep this child busy, so that the next task goes to another
    log.info("task pid=%d n=%d", pid, n)
    return pid, n * n
"""

CLIENT = """
import json, sys, time
from celery import Celery

app = Celery("client")
app.config_from_object("celery_config")
if ACTION == "delete":
    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(app.conf.task_default_queue)
    sys.exit()
# A client that only sends asks for no results: none waits in a reply queue.
sent = [
    app.send_task("celery_app.work", args=(n,), ignore_result=ACTION == "send")
    for n in range(TASKS)
]
results = {}
if ACTION == "run":
    deadline = time.monotonic() + WAIT
    for n, result in enumerate(sent):
        try:
            results[n] = result.get(timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            print(f"task {n}: {exc!r}", file=sys.stderr)
            break
print("RESULT " + json.dumps(results))
"""

LINE = re.compile(r"master pid=\d+ n=\d+( held)?|task pid=\d+ n=\d+")
TASK = re.compile(r"task pid=(\d+) n=(\d+)")

pytestmark = [
    pytest.mark.skipif(CELERY is None, reason="celery is not installed"),
    pytest.mark.skipif(not INSTALLED, reason="atfork.pth is only active when installed"),
]


class Worker:
    """``celery worker --pool=prefork`` in a process group of its own, its
    output in a file."""

    def __init__(self, tmp_path: Path, integrations: str) -> None:
        assert CELERY is not None
        self.tmp_path = tmp_path
        self.log = tmp_path / "handler.log"
        self.probe = tmp_path / "tasks.probe"
        self.output = tmp_path / "worker.out"
        queue = f"atfork-test-{uuid.uuid4().hex}"  # no other run sees its messages
        (tmp_path / "celery_config.py").write_text(
            f"BROKER = {BROKER!r}; QUEUE = {queue!r}\n" + CONFIG
        )
        (tmp_path / "celery_app.py").write_text(
            f"LOG = {str(self.log)!r}; PROBE = {str(self.probe)!r}\n" + APP
        )
        env = {k: v for k, v in os.environ.items() if k != "ATFORK_INTEGRATIONS"}
        env.pop("PYTHONUNBUFFERED", None)
        env["PYTHONPATH"] = str(tmp_path)
        if integrations:
            env["ATFORK_INTEGRATIONS"] = integrations
        with self.output.open("wb") as output:
            self.process = subprocess.Popen(
                [
                    CELERY,
                    "-A",
                    "celery_app",
                    "worker",
                    "--pool=prefork",
                    "-c",
                    str(CHILDREN),
                    "--loglevel=INFO",
                    "--hostname",
                    f"{queue}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=env,
                start_new_session=True,  # its children are killed with it, whatever they do
            )

    def client(self, action: str, wait: float = 0.0) -> dict[str, Any]:
        """Run the client: ``send`` the tasks, or ``run`` them (send, then
        wait ``wait`` seconds at most for all results), or ``delete`` the
        queue. Returns the results it got, by task number."""
        source = f"ACTION = {action!r}; TASKS = {TASKS}; WAIT = {wait}\n" + CLIENT
        run = run_python(
            source,
            timeout=wait + 60,
            env={"PYTHONPATH": str(self.tmp_path), "ATFORK_INTEGRATIONS": ""},
        )
        assert not run.timed_out, self.report(f"the client hung:\n{run.stderr}")
        assert 0 == run.returncode, self.report(f"the client failed:\n{run.stderr}")
        for line in run.stdout.splitlines():
            if line.startswith("RESULT "):
                results: dict[str, Any] = json.loads(line[len("RESULT ") :])
                return results
        return {}

    def group(self) -> dict[int, tuple[int, str]]:
        """The processes of the worker's process group: their parent and state, by pid."""
        found = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path(entry.path, "stat").read_text()
                except OSError:  # it ended
                    continue
                # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
                state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
                if int(pgrp) == self.process.pid:
                    found[int(entry.name)] = (int(ppid), state)
        return found

    def children(self) -> set[int]:
        """The pool's children: the processes the master started."""
        return {pid for pid, (ppid, _) in self.group().items() if ppid == self.process.pid}

    def asleep_on_a_lock(self, pid: int) -> bool:
        """Whether process ``pid`` (its main thread) waits on a futex: a lock."""
        try:
            return "futex" in Path(f"/proc/{pid}/wchan").read_text()
        except OSError:  # it ended
            return False

    def starts(self) -> list[tuple[int, int, bool]]:
        """(pid, task, whether the handler's lock was held) for each task that started."""
        if not self.probe.exists():
            return []
        found = re.findall(r"start pid=(\d+) n=(\d+) locked=(\w+)", self.probe.read_text())
        return [(int(pid), int(n), locked == "True") for pid, n, locked in found]

    def report(self, message: str) -> str:
        """``message``, and the worker's output and tasks so far."""
        output = self.output.read_text("utf-8", "replace")
        tasks = self.starts()
        return f"{message}\n--- worker output ---\n{output[-20000:]}\n--- tasks ---\n{tasks}"

    def terminate(self) -> int:
        """SIGTERM to the master; its exit code, once it and its children ended."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(self.report("the master outlived SIGTERM by 30 s")) from None
        deadline = time.monotonic() + 10
        while self.group() and time.monotonic() < deadline:
            time.sleep(0.1)
        return code

    def kill(self) -> None:
        """Kill the process group, whatever is left of it, and delete the queue."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.client("delete")


def log_lines(worker: Worker) -> list[str]:
    """The lines of the handler's file, each whole and none repeated."""
    lines = worker.log.read_text().splitlines()
    broken = [line for line in lines if not LINE.fullmatch(line)]
    assert [] == broken, worker.report("lines broken or run together")
    repeated = [line for line, count in collections.Counter(lines).items() if count > 1]
    assert [] == repeated, worker.report("lines written twice")
    return lines


@pytest.fixture
def worker_in(tmp_path: Path) -> Iterator[Callable[[str], Worker]]:
    """Start a worker with the integrations named; killed at the end, whatever happened."""
    require("rabbitmq", "celery")
    started: list[Worker] = []

    def start(integrations: str) -> Worker:
        started.append(Worker(tmp_path, integrations))
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


@pytest.mark.parametrize("boot", [1, 2, 3])
def test_with_atfork_every_task_completes_and_sigterm_stops_the_worker(
    worker_in: Callable[[str], Worker], boot: int
) -> None:
    """With ATFORK_INTEGRATIONS=logging,stdio,threading every task returns,
    each of the pool's children serves some, each task's record is written
    once, and SIGTERM stops the master (exit code 0) and all its children."""
    worker = worker_in(INTEGRATIONS)
    results = worker.client("run", wait=60)
    assert TASKS == len(results), worker.report(f"{TASKS - len(results)} tasks hung")
    children = worker.children()
    assert CHILDREN == len(children), worker.report(f"the pool's children: {children}")
    assert children == {pid for pid, _ in results.values()}, worker.report("idle children")
    assert {n: n * n for n in range(TASKS)} == {int(n): v for n, (_, v) in results.items()}
    assert [] == [start for start in worker.starts() if start[2]], worker.report("lock held")

    assert 0 == worker.terminate()
    assert {} == worker.group(), worker.report("processes outlived the master")

    # Each task's record once, from the child that ran it.
    tasks = [TASK.fullmatch(line) for line in log_lines(worker)]
    logged = sorted((int(task[2]), int(task[1])) for task in tasks if task is not None)
    assert sorted((int(n), pid) for n, (pid, _) in results.items()) == logged


def test_without_atfork_each_child_hangs_in_its_first_log_call(
    worker_in: Callable[[str], Worker],
) -> None:
    """Without atfork every child of the pool hangs in its first task's log
    call, and no task completes.

    The master's logging thread holds the handler's lock in ``emit()`` until
    the worker is ready, after its pool forked: each child gets the lock
    held, and no thread of the child will release it (a thread that merely
    logs all the time leaves it held at some forks only). Each child finds
    it held as its first task starts; once each is asleep on a lock, the
    test confirms that nothing moves."""
    worker = worker_in("")
    worker.client("send")
    deadline = time.monotonic() + 60
    while len({pid for pid, _, _ in worker.starts()}) < CHILDREN:
        assert time.monotonic() < deadline, worker.report("not every child started a task")
        time.sleep(0.1)
    starts = worker.starts()
    assert worker.children() == {pid for pid, _, _ in starts}, worker.report("not the pool")
    assert [True] * CHILDREN == [locked for _, _, locked in starts], worker.report("lock free")
    while not all(worker.asleep_on_a_lock(pid) for pid, _, _ in starts):
        assert time.monotonic() < deadline, worker.report("a child is not waiting on a lock")
        time.sleep(0.1)
    assert CHILDREN == len(worker.starts()), worker.report("tasks went on")
    assert [] == [line for line in log_lines(worker) if line.startswith("task")]
