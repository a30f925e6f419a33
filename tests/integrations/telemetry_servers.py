"""A local collector for the SDK tests: OTLP/HTTP (traces and logs) and
sentry's envelope endpoint, in the test process, on 127.0.0.1.

Each item that arrives (a span, a log record, an event) is recorded by its
name, which the scenarios make of a label and the pid of the process that
made it, so a test counts what arrived, from whom, and how often. While
:meth:`Collector.slow` is in effect, the collector holds every answer until
it is released (or its patience runs out): an exporter is then busy
exporting, its worker thread inside a request, when the scenario forks. A
scenario in another process says the same through ``GET /_slow``,
``GET /_held`` (how many answers are held now) and ``GET /_release``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from servers import MEET, answers_by_worker, free_port, stop

#: How long a held answer waits for its release, at most.
PATIENCE = 20.0


def _otlp_names(path: str, body: bytes) -> list[str]:
    if path.endswith("/v1/traces"):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        traces = ExportTraceServiceRequest.FromString(body)
        return [
            span.name
            for resource in traces.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    logs = ExportLogsServiceRequest.FromString(body)
    return [
        record.body.string_value
        for resource in logs.resource_logs
        for scope in resource.scope_logs
        for record in scope.log_records
    ]


def _envelope_names(body: bytes) -> list[str]:
    """The ``name`` tag of each event and the body of each log of a sentry
    envelope (a header line, then a header line and a payload per item)."""
    names = []
    lines = iter(body.split(b"\n"))
    next(lines)  # the envelope's header
    for header_line in lines:
        if not header_line.strip():
            continue
        header = json.loads(header_line)
        payload = next(lines)
        if header.get("length") is not None:
            while len(payload) < header["length"]:  # a payload holding newlines
                payload += b"\n" + next(lines)
        item = json.loads(payload)
        if header.get("type") == "event":
            names.append(item.get("tags", {}).get("name", "?"))
        elif header.get("type") == "log":
            names += [log["body"] for log in item.get("items", [])]
    return names


class Collector:
    """What the endpoints received, and how they answer."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.names: list[str] = []
        # The connections each name arrived on, numbered as accepted.
        self.connections: dict[str, set[int]] = {}
        self.accepted = 0
        self.requests = 0
        self._slow = False
        self.held = 0

    def number(self) -> int:
        """The next connection's number."""
        with self.changed:
            self.accepted += 1
            return self.accepted

    def add(self, names: list[str], connection: int) -> None:
        with self.changed:
            self.names += names
            for name in names:
                self.connections.setdefault(name, set()).add(connection)
            self.requests += 1
            self.changed.notify_all()

    def counts(self, prefix: str = "") -> Counter[str]:
        """How often each name starting with ``prefix`` arrived."""
        with self.changed:
            return Counter(n for n in self.names if n.startswith(prefix))

    def wait_for(self, names: list[str], timeout: float = 30.0) -> Counter[str]:
        """Wait until each of ``names`` arrived at least once (or
        ``timeout`` passed); then the counts of every name."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not set(names) <= set(self.names):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            return Counter(self.names)

    def wait_held(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until ``count`` answers are held back."""
        with self.changed:
            return self.changed.wait_for(lambda: self.held >= count, timeout)

    @contextlib.contextmanager
    def slow(self) -> Iterator[None]:
        """Hold every answer until the block ends."""
        with self.changed:
            self._slow = True
        try:
            yield
        finally:
            with self.changed:
                self._slow = False
                self.changed.notify_all()

    def hold(self) -> None:
        """Hold the calling handler's answer while the collector is slow."""
        deadline = time.monotonic() + PATIENCE
        with self.changed:
            if not self._slow:
                return
            self.held += 1
            self.changed.notify_all()
            while self._slow and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())
            self.held -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    collector: Collector

    def setup(self) -> None:
        super().setup()
        self.number = self.collector.number()  # this handler serves one connection

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read the collector instead

    def do_GET(self) -> None:
        collector = self.collector
        with collector.changed:
            if self.path == "/_slow":
                collector._slow = True
            elif self.path == "/_release":
                collector._slow = False
                collector.changed.notify_all()
            body = json.dumps({"held": collector.held}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        if self.path.startswith("/api/"):
            names = _envelope_names(body)
        else:
            names = _otlp_names(self.path, body)
        self.collector.hold()
        self.collector.add(names, self.number)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a held answer is no news


@contextlib.contextmanager
def collect() -> Iterator[tuple[Collector, str]]:
    """A collector listening on 127.0.0.1, and its base URL; stopped at the end."""
    collector = Collector()
    handler = type("Handler", (_Handler,), {"collector": collector})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield collector, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        with collector.changed:
            collector._slow = False
            collector.changed.notify_all()
        server.shutdown()
        server.server_close()
        thread.join(10)


#: The gunicorn next to this interpreter, if installed.
GUNICORN = shutil.which("gunicorn", path=str(Path(sys.executable).parent))


def preload(
    tmp_path: Path, url: str, app: str, integrations: str
) -> tuple[int, dict[int, Any], str]:
    """Run ``app`` (source defining a WSGI ``app``, which may call the
    ``meet`` of servers.MEET with ``ARRIVED`` and read ``URL``) under
    gunicorn --preload with three workers and ``ATFORK_INTEGRATIONS``; ask
    until each worker answered, then stop it with SIGTERM. The master's pid,
    each worker's first answer by pid, and gunicorn's output."""
    assert GUNICORN is not None
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    settings = f"URL = {url!r}; ARRIVED = {str(arrived)!r}\n"
    (tmp_path / "telemetry_app.py").write_text(settings + MEET + app)
    port = free_port()
    command = [GUNICORN, "--preload", "--workers", "3", "--bind", f"127.0.0.1:{port}"]
    server = subprocess.Popen(
        [*command, "--chdir", str(tmp_path), "telemetry_app:app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ATFORK_INTEGRATIONS": integrations},
        start_new_session=True,  # its workers are killed with it, whatever they do
    )
    try:
        answers = answers_by_worker(port, 3, timeout=60)
    finally:
        log = stop(server, signal.SIGTERM)
    return server.pid, answers, log
