"""Fork latency: atfork against os.register_at_fork and a bare fork.

For N no-op hook triples (prepare, parent, child) this measures two figures:

* parent: from the ``os.fork()`` call to its return in the parent;
* child-ready: from the ``os.fork()`` call to the child having run its
  callbacks (the child reads the same monotonic clock as soon as
  ``os.fork()`` returns in it).

The modes: a bare fork, N triples given to ``os.register_at_fork``, N
given to ``atfork.atfork``, and ``loop``: one ``os.register_at_fork``
triple, each a Python loop over N no-ops, the floor of any dispatcher
written in Python (no state of its own, nothing to look up).

Each measurement runs in a fresh interpreter that imports atfork (so that
every mode copies the same memory at fork, and only the dispatch differs);
the modes take turns over
several rounds in shuffled order, and the report gives the median over
rounds of each run's median, with ratios. It also gives the page faults the
parent and the child took per fork: every page a process writes after a fork
is copied, and that, more than the calls themselves, is what fork-time code
costs.
Run ``python benchmarks/fork_latency.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import select
import signal
import statistics
import struct
import subprocess
import sys
import time
from typing import Callable

MODES = ("bare", "register_at_fork", "loop", "atfork")
#: What a measurement gives: the median parent and child-ready latencies
#: (ns), and page faults per fork in the parent and in the child.
Figures = tuple[float, float, float, float]
# What a child sends back: the clock when it was ready, and its page faults.
_REPORT = struct.Struct("!qq")
#: Seconds a child (or a measuring interpreter) may take before the run fails.
DEADLINE = 60.0


def measure(mode: str, hooks: int, forks: int) -> Figures:
    """In this interpreter: set up ``mode`` and return the median latencies (ns)."""

    import atfork  # every mode: the same modules loaded, the same memory to copy

    def noop() -> None:
        pass

    if mode == "register_at_fork":
        for _ in range(hooks):
            os.register_at_fork(before=noop, after_in_parent=noop, after_in_child=noop)
    elif mode == "loop":
        # The least a dispatcher written in Python costs: one registration
        # per phase, a loop over a tuple, and no state of its own.
        calls = (noop,) * hooks

        def loop() -> None:
            for call in calls:
                call()

        os.register_at_fork(before=loop, after_in_parent=loop, after_in_child=loop)
    elif mode == "atfork":
        # The dispatcher is installed by the first registration; an empty
        # registry is measured with it installed.
        atfork.atfork(child=noop).unregister()
        for _ in range(hooks):
            atfork.atfork(noop, noop, noop)
    return time_forks(forks)


def time_forks(forks: int, in_child: Callable[[], object] | None = None) -> Figures:
    """Fork ``forks`` times; return the median parent and child-ready
    latencies (ns) and page faults per fork in the parent and in the child.
    The child calls ``in_child`` (if given) before it reads the clock. A
    child that sends nothing within :data:`DEADLINE` seconds is killed and
    the run fails."""
    read, write = os.pipe()
    clock = time.perf_counter_ns
    parent_ns, child_ns, parent_faults, child_faults = [], [], [], []
    try:
        for _ in range(forks):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = clock()
            pid = os.fork()
            if pid == 0:
                try:
                    if in_child is not None:
                        in_child()
                    ready = clock()
                    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    os.write(write, _REPORT.pack(ready, faults))
                finally:
                    os._exit(0)
            parent_ns.append(clock() - start)
            parent_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            ready, faults = _REPORT.unpack(_read_report(read, pid))
            child_ns.append(ready - start)
            child_faults.append(faults)
            reap(pid)
    finally:
        os.close(read)
        os.close(write)
    return (
        statistics.median(parent_ns),
        statistics.median(child_ns),
        statistics.median(parent_faults),
        statistics.median(child_faults),
    )


def _read_report(read: int, pid: int) -> bytes:
    """The child's report from pipe ``read``; the child is killed and the
    run fails if it sends none within the deadline."""
    if select.select([read], [], [], DEADLINE)[0]:
        report = os.read(read, _REPORT.size)
        if len(report) == _REPORT.size:
            return report
    reap(pid, kill=True)
    raise RuntimeError(f"child {pid} sent no report within {DEADLINE} s")


def reap(pid: int, kill: bool = False) -> None:
    """Wait for child ``pid`` to end (killed first with ``kill``, or if it
    is still there at the deadline)."""
    deadline = time.monotonic() + DEADLINE
    while not kill and not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            kill = True
        else:
            time.sleep(0.0002)  # polling the child's exit
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)  # killed: it ends at once


def run_fresh(script: str, *args: object) -> tuple[float, ...]:
    """Run ``script --child *args`` in a fresh interpreter; return the
    figures it prints."""
    out = subprocess.run(
        [sys.executable, script, "--child", *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        timeout=20 * DEADLINE,
    ).stdout
    return tuple(float(figure) for figure in out.split())


Case = tuple[object, ...]


def medians(
    script: str, cases: list[Case], rounds: int, *args: object
) -> dict[Case, tuple[float, ...]]:
    """Run ``script --child *case *args`` for every case in a fresh
    interpreter, ``rounds`` times in shuffled order (no case always runs
    right after another); return each case's figures, median over rounds."""
    results: dict[Case, list[tuple[float, ...]]] = {case: [] for case in cases}
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        order = list(cases)
        shuffle(order)
        for case in order:
            results[case].append(run_fresh(script, *case, *args))
    return {
        case: tuple(statistics.median(figure) for figure in zip(*runs))
        for case, runs in results.items()
    }


def report_against_bare(
    what: str, rounds: int, forks: int, median: dict[str, tuple[float, ...]], mode: str
) -> None:
    """Print the figures of every mode of ``median`` (each the median over
    rounds, in ns), with the ratio of ``mode`` to the bare fork."""
    print(
        f"CPython {sys.version.split()[0]}, {rounds} rounds x {forks} forks, {what}, "
        "median of per-run medians (us)"
    )
    print(f"{'mode':<8}{'parent':>10}{'child-ready':>13}{'faults':>8}")
    for name, (parent, child, faults, *_) in median.items():
        print(f"{name:<8}{parent / 1e3:>10.1f}{child / 1e3:>13.1f}{faults:>8.0f}")
    ratios = [median[mode][f] / median["bare"][f] for f in (0, 1)]
    print(f"\nratio {mode} / bare fork: parent {ratios[0]:.3f}, child-ready {ratios[1]:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="shuffled rounds (15)")
    parser.add_argument("--forks", type=int, default=100, help="forks per run (100)")
    parser.add_argument("--hooks", type=int, nargs="+", default=[0, 10, 1000])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, hooks, forks = args.child[0], int(args.child[1]), int(args.child[2])
        print(*measure(mode, hooks, forks))
        return 0

    cases: list[Case] = [("bare", 0)] + [(m, n) for n in args.hooks for m in MODES[1:]]
    median = medians(__file__, cases, args.rounds, args.forks)
    print(
        f"CPython {sys.version.split()[0]}, {args.rounds} rounds x {args.forks} forks, "
        "median of per-run medians (us)"
    )
    print(f"{'':<47}{'page faults':^16}".rstrip())
    print(f"{'mode':<18}{'hooks':>6}{'parent':>10}{'child-ready':>13}{'parent':>8}{'child':>8}")
    for case in cases:
        parent, child, parent_faults, child_faults = median[case]
        print(
            f"{case[0]:<18}{case[1]:>6}{parent / 1e3:>10.1f}{child / 1e3:>13.1f}"
            f"{parent_faults:>8.0f}{child_faults:>8.0f}"
        )
    print("\nratios (parent, child-ready)")
    for n in args.hooks:
        for figure_name, base in (
            ("os.register_at_fork", ("register_at_fork", n)),
            ("a Python loop", ("loop", n)),
            ("bare fork", ("bare", 0)),
        ):
            ratios = [median[("atfork", n)][f] / median[base][f] for f in (0, 1)]
            print(f"  atfork / {figure_name:<20} N={n:<5} {ratios[0]:.3f}  {ratios[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
