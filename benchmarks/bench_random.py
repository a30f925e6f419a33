"""Fork latency added by the random integration, against a bare fork.

Every case imports numpy and atfork and makes N numpy generators
(``default_rng()``, PCG64); the integration's cases enable it in a mode
first, and it finds the N generators (no ``track()``), the bare case does
neither. Per fork it measures:

* parent: from the ``os.fork()`` call to its return in the parent;
* child-ready: from the ``os.fork()`` call to the child having run its
  callbacks (reseeded everything), read on the same monotonic clock; with
  ``--draw``, to the child having also drawn one number from numpy's global
  generator and from each of the N (what a child that uses them pays anyway:
  the first touch of numpy's code and data after a fork costs page faults,
  whoever touches them first);
* faults: the parent's page faults per fork.

Each run is a fresh interpreter; the cases take turns over several rounds in
shuffled order, and the report gives the median over rounds of each run's
median, with ratios against the bare fork.

``--scan`` measures instead what finding costs outside forks, in a process
holding many objects (``--objects``, instances of a small class, each
tracked by the garbage collector): the one heap scan of ``enable()``, the
scan of the youngest generation in the first prepare after a numpy
generator was made, and making a ``random.Random()`` with and without the
integration. Run ``python benchmarks/bench_random.py --help``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

from fork_latency import Case, Figures, medians, time_forks  # this script's folder is on sys.path


def measure(mode: str, generators: int, forks: int, draw: bool) -> Figures:
    """In this interpreter: set up the case and return the median latencies (ns)
    and page faults."""
    import numpy as np

    import atfork.integrations.random as atfork_random

    if mode != "bare":
        atfork_random.enable(mode=mode, seed=1 if mode == "derived" else None)
    rngs = [np.random.default_rng() for _ in range(generators)]
    np.random.random()  # the legacy global generator exists in every case

    def draw_once() -> None:
        np.random.random()
        for rng in rngs:
            rng.random()

    return time_forks(forks, draw_once if draw else None)


class _Small:
    __slots__ = ("next",)

    def __init__(self, next: object) -> None:
        self.next = next


def scan(objects: int) -> None:
    """Print what finding costs in a process with ``objects`` more objects."""
    import random

    import numpy as np

    import atfork.integrations.random as atfork_random

    heap = [_Small(i) for i in range(objects)]
    gc.collect()
    start = time.perf_counter_ns()
    atfork_random.enable()
    enable_ms = (time.perf_counter_ns() - start) / 1e6

    young = []
    for _ in range(21):
        rng = np.random.default_rng()
        start = time.perf_counter_ns()
        atfork_random._find_new()  # what prepare runs
        young.append(time.perf_counter_ns() - start)
        del rng

    def making(n: int = 100_000) -> float:
        gc.disable()  # the collections of the big heap are not what is measured
        start = time.perf_counter_ns()
        for _ in range(n):
            random.Random(1)
        elapsed = time.perf_counter_ns() - start
        gc.enable()
        return elapsed / n

    with_ns = statistics.median(making() for _ in range(5))
    atfork_random.disable()
    without_ns = statistics.median(making() for _ in range(5))
    print(
        f"CPython {sys.version.split()[0]}, numpy {np.__version__}, "
        f"{len(gc.get_objects())} objects tracked by gc ({len(heap)} made here)"
    )
    print(f"enable(), one heap scan:                 {enable_ms:9.1f} ms")
    print(f"prepare after a generator was made:      {statistics.median(young) / 1e3:9.1f} us")
    print(f"random.Random(1): without / with finding {without_ns:6.0f} / {with_ns:.0f} ns")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--forks", type=int, default=200, help="forks per run (200)")
    parser.add_argument("--generators", type=int, default=10, help="generators made (10)")
    parser.add_argument(
        "--draw", action="store_true", help="the child draws from every generator before it reports"
    )
    parser.add_argument("--scan", action="store_true", help="measure finding outside forks")
    parser.add_argument(
        "--objects", type=int, default=1_000_000, help="objects made for --scan (1000000)"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scan:
        scan(args.objects)
        return 0
    if args.child:
        mode, generators, forks, draw = args.child
        print(*measure(mode, int(generators), int(forks), draw == "1"))
        return 0

    n = args.generators
    cases: list[Case] = [("bare", n), ("fresh", 0), ("fresh", n), ("derived", 0), ("derived", n)]
    median = medians(__file__, cases, args.rounds, args.forks, int(args.draw))
    import numpy

    print(
        f"CPython {sys.version.split()[0]}, numpy {numpy.__version__}, {args.rounds} rounds x "
        f"{args.forks} forks, median of per-run medians (us)"
        + (", the child draws from every generator" if args.draw else "")
    )
    print(f"{'case':<10}{'found':>8}{'parent':>10}{'child-ready':>13}{'faults':>8}")
    for case in cases:
        found = 0 if case[0] == "bare" else case[1]
        print(
            f"{case[0]:<10}{found:>8}{median[case][0] / 1e3:>10.1f}"
            f"{median[case][1] / 1e3:>13.1f}{median[case][2]:>8.0f}"
        )
    print("\nratios vs the bare fork (parent, child-ready)")
    for case in cases[1:]:
        ratios = [median[case][f] / median[cases[0]][f] for f in (0, 1)]
        print(f"  {case[0]:<8} found={case[1]:<3} {ratios[0]:.3f}  {ratios[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
