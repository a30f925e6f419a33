"""Helpers for the tests that start a real server (gunicorn, uWSGI)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Source for an app's module: ``meet(directory, workers)``, called at the
#: start of each request, holds a worker's first request until ``workers``
#: workers each have theirs (or 5 s passed), so that concurrent requests go
#: one to each worker (a busy worker accepts no other).
MEET = """
import os as _os, time as _time

_met = []

def meet(directory, workers):
    if _met:
        return
    _met.append(True)
    open(_os.path.join(directory, str(_os.getpid())), "w").close()
    end = _time.monotonic() + 5
    while len(_os.listdir(directory)) < workers and _time.monotonic() < end:
        _time.sleep(0.01)  # polling the other workers' arrival
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(port: int) -> Any:
    """The JSON answer to ``GET /`` on ``port``, or None if nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            return json.loads(response.read())
    except OSError:
        return None


def answers_by_worker(port: int, workers: int, timeout: float) -> dict[int, Any]:
    """Ask ``GET /`` on ``port`` in bursts of concurrent requests until
    ``workers`` processes (told apart by the ``pid`` in their JSON answers)
    have answered, or ``timeout`` seconds passed; return each one's first
    answer, by pid."""
    answers: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(answers) < workers and time.monotonic() < deadline:
        with ThreadPoolExecutor(2 * workers) as pool:
            for answer in pool.map(lambda _: get_json(port), range(2 * workers)):
                if answer is not None:
                    answers.setdefault(answer["pid"], answer)
        if len(answers) < workers:
            time.sleep(0.2)
    return answers


def stop(server: subprocess.Popen[bytes], sig: int) -> str:
    """Stop ``server`` (started with ``start_new_session=True``) with ``sig``;
    kill its whole process group if it is not gone in 30 s (workers stuck on
    something the test broke on purpose must not outlive the test). Returns
    its output."""
    server.send_signal(sig)
    try:
        output = server.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        output = server.communicate()[0]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # workers that outlived their master
    return output.decode("utf-8", "replace")
