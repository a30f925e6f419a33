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
import sys
import threading
import warnings

from fork_latency import Figures, medians, time_forks  # the same measurement

MODES = ("bare", "free", "busy", "enabled")


def measure(mode: str, locks: int, forks: int) -> Figures:
    """In this interpreter: set ``mode`` up, fork, and return the median
    latencies (ns) in the parent and until the child is ready, and the
    median page faults of the parent per fork (each page written after a
    fork is copied, and that, more than the calls, is what fork-time code
    costs)."""
    from atfork.integrations import threading as atfork_threading

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
    figures = time_forks(forks)
    stop.set()
    return figures


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

    by_case = medians(__file__, [(mode,) for mode in MODES], args.rounds, args.locks, args.forks)
    median = {mode: by_case[(mode,)] for mode in MODES}

    print(
        f"CPython {sys.version.split()[0]}, {args.locks} tracked locks, {args.rounds} rounds x "
        f"{args.forks} forks, median of per-run medians (us), ratio to bare"
    )
    print(f"{'mode':<10}{'parent':>10}{'ratio':>8}{'child-ready':>13}{'ratio':>8}{'faults':>8}")
    for mode in MODES:
        parent, child = median[mode][0], median[mode][1]
        print(
            f"{mode:<10}{parent / 1e3:>10.1f}{parent / median['bare'][0]:>8.2f}"
            f"{child / 1e3:>13.1f}{child / median['bare'][1]:>8.2f}{median[mode][2]:>8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
