"""Fork latency added by the logging and stdio integrations, with 10
handlers configured.

The handlers: a StreamHandler on stderr, one on stdout, and 8 FileHandlers
(half of them with a lock of their own as an attribute, as some handlers
have). For each mode (no integration, logging, stdio, both) this measures

* parent: from the ``os.fork()`` call to its return in the parent;
* child-ready: from the ``os.fork()`` call to the child having run its
  callbacks (the child reads the same monotonic clock as soon as
  ``os.fork()`` returns in it);
* faults: the page faults the parent took per fork (every page a process
  writes after a fork is copied);

each in a fresh interpreter, the modes taking turns over several rounds in
shuffled order. The report gives the median over rounds of each run's
median, and the ratios to a bare fork (atfork not imported); "none" is
atfork imported with no integration enabled. Run
``python benchmarks/bench_logging.py --help``.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time

MODES: dict[str, tuple[str, ...] | None] = {
    "bare": None,  # atfork not even imported
    "none": (),
    "logging": ("logging",),
    "stdio": ("stdio",),
    "both": ("logging", "stdio"),
}
_STAMP = struct.Struct("!q")


def measure(mode: str, forks: int) -> tuple[float, float, float]:
    """In this interpreter: configure the handlers, enable ``mode``'s
    integrations and return the median latencies (ns)."""
    import logging
    import threading

    log = logging.getLogger("bench")
    log.addHandler(logging.StreamHandler(sys.stderr))
    log.addHandler(logging.StreamHandler(sys.stdout))
    folder = tempfile.mkdtemp()
    for number in range(8):
        handler = logging.FileHandler(os.path.join(folder, f"{number}.log"))
        if number % 2:
            handler.guard = threading.Lock()  # type: ignore[attr-defined]
        log.addHandler(handler)
    integrations = MODES[mode]
    if integrations is not None:
        import atfork.integrations

        atfork.integrations.enable(*integrations)

    read, write = os.pipe()
    clock = time.perf_counter_ns
    parent_ns, child_ns, faults = [], [], []
    for _ in range(forks):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = clock()
        pid = os.fork()
        if pid == 0:
            os.write(write, _STAMP.pack(clock()))
            os._exit(0)
        parent_ns.append(clock() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        child_ns.append(_STAMP.unpack(os.read(read, _STAMP.size))[0] - start)
        os.waitpid(pid, 0)
    return statistics.median(parent_ns), statistics.median(child_ns), statistics.median(faults)


def run(mode: str, forks: int) -> tuple[float, ...]:
    """Measure in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(forks)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tuple(float(figure) for figure in out.split()[-3:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--forks", type=int, default=300, help="forks per run (300)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        figures = measure(args.child[0], int(args.child[1]))
        sys.stdout.flush()  # the handlers' own output first
        print(*figures)
        return 0

    results: dict[str, list[tuple[float, ...]]] = {mode: [] for mode in MODES}
    shuffle = random.Random(0).shuffle
    for _ in range(args.rounds):
        order = list(MODES)
        shuffle(order)  # no mode always runs right after another
        for mode in order:
            results[mode].append(run(mode, args.forks))

    def median(mode: str, figure: int) -> float:
        return statistics.median(r[figure] for r in results[mode])

    print(
        f"CPython {sys.version.split()[0]}, 10 handlers, {args.rounds} rounds x "
        f"{args.forks} forks, median of per-run medians (us)"
    )
    print(
        f"{'integrations':<14}{'parent':>10}{'child-ready':>13}{'ratio':>8}{'ratio':>8}"
        f"{'faults':>8}"
    )
    for mode in MODES:
        ratios = [median(mode, f) / median("bare", f) for f in (0, 1)]
        print(
            f"{mode:<14}{median(mode, 0) / 1e3:>10.1f}{median(mode, 1) / 1e3:>13.1f}"
            f"{ratios[0]:>8.2f}{ratios[1]:>8.2f}{median(mode, 2):>8.0f}"
        )
    print("(ratios: parent and child-ready, against a bare fork; faults: the parent's")
    print(" page faults per fork, each page written after a fork being copied)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
