"""Fork latency added by the logging and stdio integrations, with 10
handlers configured.

The handlers: a StreamHandler on stderr, one on stdout, and 8 FileHandlers
(half of them with a lock of their own as an attribute, as some handlers
have). For each mode (no integration, logging, stdio, both), in a process
with no other thread and in one with an idle thread, this measures

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
import sys
import tempfile

from fork_latency import Case, Figures, medians, time_forks  # the same measurement

MODES: dict[str, tuple[str, ...] | None] = {
    "bare": None,  # atfork not even imported
    "none": (),
    "logging": ("logging",),
    "stdio": ("stdio",),
    "both": ("logging", "stdio"),
}


def measure(mode: str, threaded: bool, forks: int) -> Figures:
    """In this interpreter: configure the handlers, start an idle thread if
    ``threaded``, enable ``mode``'s integrations and return the median
    latencies (ns) and page faults."""
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
    if threaded:
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    integrations = MODES[mode]
    if integrations is not None:
        import atfork.integrations

        atfork.integrations.enable(*integrations)

    return time_forks(forks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--forks", type=int, default=300, help="forks per run (300)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        figures = measure(args.child[0], args.child[1] == "1", int(args.child[2]))
        sys.stdout.flush()  # the handlers' own output first
        print(*figures)
        return 0

    cases: list[Case] = [(mode, threaded) for threaded in (0, 1) for mode in MODES]
    median = medians(__file__, cases, args.rounds, args.forks)
    print(
        f"CPython {sys.version.split()[0]}, 10 handlers, {args.rounds} rounds x "
        f"{args.forks} forks, median of per-run medians (us)"
    )
    for threaded in (0, 1):
        print("\nwith another thread alive" if threaded else "\nno other thread")
        print(
            f"{'integrations':<14}{'parent':>10}{'child-ready':>13}{'ratio':>8}{'ratio':>8}"
            f"{'faults':>8}"
        )
        for mode in MODES:
            case, bare = (mode, threaded), ("bare", threaded)
            ratios = [median[case][f] / median[bare][f] for f in (0, 1)]
            print(
                f"{mode:<14}{median[case][0] / 1e3:>10.1f}{median[case][1] / 1e3:>13.1f}"
                f"{ratios[0]:>8.2f}{ratios[1]:>8.2f}{median[case][2]:>8.0f}"
            )
    print("\n(ratios: parent and child-ready, against a bare fork; faults: the parent's")
    print(" page faults per fork, each page written after a fork being copied)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
