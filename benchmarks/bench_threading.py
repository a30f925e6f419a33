"""Fork latency with tracked locks: atfork.integrations.threading against a
bare fork.

Modes, with N tracked ``threading.Lock`` objects (100 by default):

* ``bare``: nothing tracked, nothing enabled;
* ``free``: N tracked locks, all free (the common case): prepare acquires
  each without waiting, parent and child release each;
* ``busy``: N tracked locks, all held by another thread: the child
  re-initialises each;
* ``enabled``: ``enable()`` and nothing tracked (the child's checks of
  import locks, multiprocessing queues and asyncio loops).

Every mode runs in a fresh interpreter that imports the same modules and
has one other thread alive (it holds the locks in ``busy``, and waits in the
others), so that each fork copies the same memory. Each run forks many times
and takes the median of two latencies: from the ``os.fork()`` call to its
return in the parent, and to the child having run its callbacks (the child
reads the same monotonic clock as soon as ``os.fork()`` returns in it). The
modes take turns over several rounds, in shuffled order; the report gives
the median of the runs' medians and the ratio to ``bare``, and the page
faults the parent took per fork.
Run ``python benchmarks/bench_threading.py --help``.
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
import threading
import time
import warnings

MODES = ("bare", "free", "busy", "enabled")
_STAMP = struct.Struct("!q")


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _fork_once(write: int) -> tuple[int, int, int]:
    """Fork once; return the pid, the ns the parent waited for os.fork(),
    and the page faults the parent took meanwhile."""
    faults = _faults()
    start = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        os.write(write, _STAMP.pack(time.perf_counter_ns() - start))
        os._exit(0)
    return pid, time.perf_counter_ns() - start, _faults() - faults


def measure(mode: str, locks: int, forks: int) -> tuple[float, float, float]:
    """In this interpreter: set ``mode`` up, fork, and return the median
    latencies (ns) in the parent and until the child is ready, and the
    median page faults of the parent per fork (each page written after a
    fork is copied, and that, more than the calls, is what fork-time code
    costs)."""
    from atfork.integrations import threading as atfork_threading
    from atfork.testing import wait_child

    # A thread is alive in every mode; forking then warns on 3.12+.
    warnings.simplefilter("ignore", DeprecationWarning)
    tracked = [threading.Lock() for _ in range(locks)]
    if mode in ("free", "busy"):
        for lock in tracked:
            atfork_threading.track(lock)
    elif mode == "enabled":
        atfork_threading.enable()
    holding, stop = threading.Event(), threading.Event()

    def other_thread() -> None:
        if mode == "busy":
            for lock in tracked:
                lock.acquire()
        holding.set()
        stop.wait()

    thread = threading.Thread(target=other_thread, daemon=True)
    thread.start()
    holding.wait()
    read, write = os.pipe()
    parent_ns, child_ns, faults = [], [], []
    for _ in range(forks):
        pid, parent, parent_faults = _fork_once(write)
        parent_ns.append(parent)
        faults.append(parent_faults)
        child_ns.append(_STAMP.unpack(os.read(read, _STAMP.size))[0])
        wait_child(pid)
    stop.set()
    return statistics.median(parent_ns), statistics.median(child_ns), statistics.median(faults)


def run(mode: str, locks: int, forks: int) -> tuple[float, ...]:
    """Measure in a fresh interpreter: this script, in ``--child`` mode."""
    argv = [sys.executable, __file__, "--child", mode, str(locks), str(forks)]
    return tuple(map(float, subprocess.check_output(argv, text=True).split()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--forks", type=int, default=200, help="forks per run (200)")
    parser.add_argument("--locks", type=int, default=100, help="tracked locks (100)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(*measure(args.child[0], int(args.child[1]), int(args.child[2])))
        return 0

    results: dict[str, list[tuple[float, ...]]] = {mode: [] for mode in MODES}
    shuffle = random.Random(0).shuffle
    for _ in range(args.rounds):
        order = list(MODES)
        shuffle(order)  # no mode always runs right after another
        for mode in order:
            results[mode].append(run(mode, args.locks, args.forks))

    def median(mode: str, figure: int) -> float:
        return statistics.median(r[figure] for r in results[mode])

    print(
        f"CPython {sys.version.split()[0]}, {args.locks} tracked locks, {args.rounds} rounds x "
        f"{args.forks} forks, median of per-run medians (us), ratio to bare"
    )
    print(f"{'mode':<10}{'parent':>10}{'ratio':>8}{'child-ready':>13}{'ratio':>8}{'faults':>8}")
    for mode in MODES:
        parent, child = median(mode, 0), median(mode, 1)
        print(
            f"{mode:<10}{parent / 1e3:>10.1f}{parent / median('bare', 0):>8.2f}"
            f"{child / 1e3:>13.1f}{child / median('bare', 1):>8.2f}{median(mode, 2):>8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
