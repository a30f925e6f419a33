"""The local HTTP and HTTPS servers the http integration's tests use, and a
runner for scenarios.

:func:`start` runs this file as a script in a process of its own: one
HTTP/1.1 keep-alive server on plain TCP and one on TLS (a certificate
trustme makes at test time), both on 127.0.0.1 with ports the system
chose, and one shared log of the requests they received. Every answer
names the connection that carried it, by a number the servers give each
connection in turn (not by the client's port, which a later connection may
be given again once one has closed), so a test can tell which connection
served what:

``GET /echo?who=NAME``
    answers ``{"who": NAME, "connection": NUMBER}`` at once.
``GET /hold?who=NAME``
    the same answer, held back until the next request has arrived on the
    same connection (a request sent behind it) or ``/_release?who=NAME``
    is asked; so a test arranges which response a reader gets first.
``HEAD /BUCKET`` (an S3 ``HeadBucket``)
    answers 200 with the headers ``x-who: BUCKET`` and ``x-connection: NUMBER``.
``GET /_wait?who=NAME``
    answers the log entry of NAME's request once it has arrived.
``GET /_release?who=NAME``
    releases NAME's held answer.
``GET /_log?who=PREFIX``
    answers the log entries whose ``who`` starts with PREFIX.

Each scenario runs in a fresh interpreter: a prelude (the servers'
addresses, helpers, and ``atfork.integrations.http.enable()`` when asked)
and then the scenario's code, which prints its findings with ``report()``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from scenario_fork import FORK_HELPERS

#: How long the server holds an answer or waits for a request, at most.
PATIENCE = 20.0


class _Log:
    """What the servers received, shared by their threads."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.entries: list[dict[str, Any]] = []
        self.released: set[str] = set()
        self.connections = 0  # how many connections the servers accepted

    def number(self) -> int:
        """The next connection's number."""
        with self.changed:
            self.connections += 1
            return self.connections

    def add(self, entry: dict[str, Any]) -> None:
        with self.changed:
            self.entries.append(entry)
            self.changed.notify_all()

    def find(self, who: str) -> dict[str, Any] | None:
        return next((e for e in self.entries if e["who"] == who), None)

    def wait_for(self, who: str) -> dict[str, Any] | None:
        with self.changed:
            self.changed.wait_for(lambda: self.find(who), PATIENCE)
            return self.find(who)

    def release(self, who: str) -> None:
        with self.changed:
            self.released.add(who)
            self.changed.notify_all()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log: _Log
    scheme: str

    def setup(self) -> None:
        super().setup()
        self.number = self.log.number()  # this handler serves one connection
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(PATIENCE)
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read the log instead

    def _answer(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _next_request_arrived(self) -> bool:
        # Readable means a request (or an end, or TLS garbage) came behind.
        sock = self.connection
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        return bool(select.select([sock], [], [], 0)[0])

    def _hold(self, who: str) -> None:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline and not self._next_request_arrived():
            with self.log.changed:
                if who in self.log.released:
                    return
                self.log.changed.wait(0.01)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        who = parse_qs(url.query).get("who", [""])[0]
        if url.path == "/_wait":
            self._answer(json.dumps(self.log.wait_for(who)).encode())
        elif url.path == "/_release":
            self.log.release(who)
            self._answer(b"{}")
        elif url.path == "/_log":
            with self.log.changed:
                found = [e for e in self.log.entries if e["who"].startswith(who)]
            self._answer(json.dumps(found).encode())
        else:
            entry = {"who": who, "connection": self.number, "scheme": self.scheme, "path": url.path}
            self.log.add(entry)
            if url.path == "/hold":
                self._hold(who)
            self._answer(json.dumps({"who": who, "connection": self.number}).encode())

    def do_HEAD(self) -> None:
        who = urlsplit(self.path).path.strip("/").split("/")[0]
        entry = {"who": who, "connection": self.number, "scheme": self.scheme, "path": self.path}
        self.log.add(entry)
        self._answer(b"", {"x-who": who, "x-connection": str(self.number)})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        if self.context is not None:  # the handshake runs in the handler's thread
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that broke its connection on purpose is no news


def _certificates(directory: Path) -> dict[str, str]:
    """A CA and a certificate it signed for 127.0.0.1, as files in
    ``directory``; their paths."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(paths["cert"], append=i > 0)
    cert.private_key_pem.write_to_path(paths["key"])
    return paths


def serve(directory: Path) -> None:
    """Run both servers until stdin closes; print their ports and the CA
    file first."""
    paths = _certificates(directory)
    log = _Log()
    servers = []
    for scheme in ("http", "https"):
        handler = type(f"{scheme}Handler", (_Handler,), {"log": log, "scheme": scheme})
        server = _Server(("127.0.0.1", 0), handler)
        if scheme == "https":
            server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server.context.load_cert_chain(paths["cert"], paths["key"])
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    found = {scheme: server.server_address[1] for scheme, server in zip(("http", "https"), servers)}
    print(json.dumps({**found, "ca": paths["ca"]}), flush=True)
    sys.stdin.read()


class Servers:
    """The running servers: their URLs and the CA file that verifies them."""

    def __init__(self, http: str, https: str, ca: str) -> None:
        self.http = http
        self.https = https
        self.ca = ca

    def log(self, prefix: str) -> list[dict[str, Any]]:
        """The log entries whose ``who`` starts with ``prefix``."""
        import urllib.request

        with urllib.request.urlopen(f"{self.http}/_log?who={prefix}", timeout=10) as answer:
            found: list[dict[str, Any]] = json.loads(answer.read())
            return found


@contextlib.contextmanager
def start(directory: Path) -> Iterator[Servers]:
    """Start the servers in a process of their own, which makes their
    certificates in ``directory`` (trustme is imported there, not by the
    tests); stop it at the end."""
    server = subprocess.Popen(
        [sys.executable, __file__, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line, "the test servers did not start"
        found = json.loads(line)
        yield Servers(
            f"http://127.0.0.1:{found['http']}", f"https://127.0.0.1:{found['https']}", found["ca"]
        )
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


_PRELUDE = """\
import gc, json, os, signal, sys, time, urllib.request, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: forking with threads
from atfork.testing import wait_child
HTTP = {http!r}
HTTPS = {https!r}
CA = {ca!r}
TAG = {tag!r}
ATFORK = {atfork!r}
CHILD_ALARM = {child_alarm!r}
if ATFORK:
    from atfork.integrations import http
    http.enable()


def who(name):
    # A name no other scenario of this run uses.
    return TAG + "-" + name


def control(what, name):
    # Ask the servers' control paths, on a connection of its own.
    url = "{{}}/_{{}}?who={{}}".format(HTTP, what, who(name))
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def connections():
    # The connections the servers saw this scenario's requests come on.
    return sorted({{e["connection"] for e in control("log", "")}})


def new_client(library):
    # A requests.Session or an httpx.Client that trusts the servers' CA and
    # nothing from the environment (REQUESTS_CA_BUNDLE would replace the CA).
    import ssl
    if library == "requests":
        import requests
        session = requests.Session()
        session.trust_env = False
        session.verify = CA
        return session
    import httpx
    return httpx.Client(verify=ssl.create_default_context(cafile=CA), trust_env=False)


def get(client, url, name):
    # The server's answer to GET url?who=name through client, as a dict.
    return client.get("{{}}?who={{}}".format(url, who(name)), timeout=15).json()


{fork_helpers}

def error_name(exc):
    # The names of the exception and of those under it, with TLS reasons.
    names, seen = [], set()
    todo = [exc]
    while todo:
        exc = todo.pop(0)
        if exc is None or id(exc) in seen or not isinstance(exc, BaseException):
            continue
        seen.add(id(exc))
        names.append(type(exc).__name__)
        if getattr(exc, "reason", None) and isinstance(getattr(exc, "reason"), str):
            names.append(exc.reason)
        todo += [exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args]
    return " ".join(dict.fromkeys(names))
"""


def source(body: str, servers: Servers, *, atfork: bool, child_alarm: int = 30) -> str:
    """The prelude and ``body``; a forked child is killed by SIGALRM after
    ``child_alarm`` seconds."""
    prelude = _PRELUDE.format(
        http=servers.http,
        https=servers.https,
        ca=servers.ca,
        tag=uuid.uuid4().hex[:12],
        atfork=atfork,
        child_alarm=child_alarm,
        fork_helpers=FORK_HELPERS,
    )
    return prelude + textwrap.dedent(body)


def scenario(body: str, servers: Servers, *, atfork: bool, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``body`` after the prelude in a fresh interpreter; its report."""
    from atfork.testing import run_python

    run = run_python(source(body, servers, atfork=atfork), timeout=timeout)
    assert not run.timed_out, f"the scenario hung:\n{run.stderr}"
    assert 0 == run.returncode, run.stderr
    for line in reversed(run.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise AssertionError(f"the scenario reported nothing:\n{run.stdout}\n{run.stderr}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where the certificates go")
    serve(parser.parse_args().directory)
    os._exit(0)  # the handler threads may still wait on a held answer
