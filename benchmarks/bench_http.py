"""Fork latency with the http integration: a requests.Session and an
httpx.Client, each with three pooled TLS connections, against a bare fork of
the same process.

Every mode builds the same objects in a fresh interpreter (the Session and
the Client, three keep-alive TLS connections each to a local HTTPS server
that ``tests/integrations/http_servers.py`` starts, with a certificate made
by trustme) so that every mode copies the same memory. ``bare`` registers
no hook, ``atfork`` one no-op child hook (what atfork's dispatch costs by
itself), and ``http`` enables ``atfork.integrations.http`` before the
libraries are imported, which finds the connections itself. It measures:

* parent: from the ``os.fork()`` call to its return in the parent;
* child-ready: from the ``os.fork()`` call to the child having run its
  callbacks (here: neutralised six sockets, expired three httpx
  connections);
* the page faults the parent took per fork.

The modes take turns over several rounds in shuffled order; the report gives
the median over rounds of each run's median, and the ratios of http to the
bare fork and to atfork's dispatch alone. Needs the test extra
(``python -m pip install '.[test]'``). Run
``python benchmarks/bench_http.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from fork_latency import Figures, medians, report_against_bare, time_forks  # the same measurement

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integrations"))

from http_servers import start

# bare: no hook at all; atfork: atfork's dispatch with one no-op child
# hook, at the integration's priority; http: the integration.
MODES = ("bare", "atfork", "http")
CONNECTIONS = 3


def measure(mode: str, forks: int, https: str, ca: str) -> Figures:
    """In this interpreter: build the objects and return the median latencies
    (ns) and page faults of ``fork_latency.time_forks``."""
    import atfork
    from atfork.integrations import PRIORITY_HTTP, http

    if mode == "atfork":
        atfork.atfork(child=lambda: None, priority=PRIORITY_HTTP)
    if mode == "http":
        http.enable()  # before the imports: the connections are found, not tracked
    import httpx

    requests: Any = importlib.import_module("requests")  # untyped, and no stubs needed
    session = requests.Session()
    session.trust_env = False
    session.verify = ca
    client: Any = httpx.Client(verify=ssl.create_default_context(cafile=ca), trust_env=False)
    # Responses held open at once take a connection each; read to their
    # end, the connections go back to the pools, alive.
    held = [session.get(f"{https}/echo?who=s{i}", stream=True) for i in range(CONNECTIONS)]
    for response in held:
        response.content  # noqa: B018  (read to the end)
        response.close()
    with contextlib.ExitStack() as stack:
        streams = [
            stack.enter_context(client.stream("GET", f"{https}/echo?who=x{i}"))
            for i in range(CONNECTIONS)
        ]
        for response in streams:
            response.read()
    idle = [
        c
        for p in session.adapters["https://"].poolmanager.pools._container.values()
        for c in p.pool.queue
        if c is not None and c.sock is not None
    ]
    assert len(idle) == CONNECTIONS, idle
    assert len(client._transport._pool._connections) == CONNECTIONS
    figures = time_forks(forks)
    session.close()
    client.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--forks", type=int, default=200, help="forks per run (200)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, forks, https, ca = args.child
        print(*measure(mode, int(forks), https, ca))
        return 0

    with tempfile.TemporaryDirectory() as directory, start(Path(directory)) as servers:
        cases: list[tuple[object, ...]] = [(mode,) for mode in MODES]
        by_case = medians(__file__, cases, args.rounds, args.forks, servers.https, servers.ca)
    median = {mode: by_case[(mode,)] for mode in MODES}

    what = f"a requests.Session and an httpx.Client ({CONNECTIONS} TLS connections each)"
    report_against_bare(what, args.rounds, args.forks, median, "http")
    ratios = [median["http"][f] / median["atfork"][f] for f in (0, 1)]
    print(f"ratio http / atfork's dispatch: parent {ratios[0]:.3f}, child-ready {ratios[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
