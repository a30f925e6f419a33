"""Where the page faults of a fork come from, callback by callback.

The process is the service of ``bench_service.py`` with every integration
enabled and the engine, the generator, the executor and the lock tracked.
Each callback that atfork's integrations register is wrapped, as it is
registered, in a function that reads the process's minor page-fault count
before and after it; the child sends its counts back through a pipe. The
report gives, for each callback, its faults per fork (median over forks,
then over fresh interpreters), and for comparison the whole fork of the
same process unwrapped and a bare fork (atfork never imported), measured by
``bench_service.py`` in the same run.

A callback's figure counts every page it is the first to write, or to run
code from, after the fork: the first child callback pays for pages later
ones would have touched too, so the figures say where the faults happen.
What the wrapped callbacks do not account for is atfork's dispatcher and the
standard library's own hooks. A prepare callback's faults are those of the
pages the previous fork write-protected, and are paid in the parent's fork
call. Needs what ``bench_service.py`` needs. Run
``python benchmarks/bench_faults.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import warnings
from collections import defaultdict
from typing import Any, Callable

from bench_service import INTEGRATIONS, build_service
from fork_latency import DEADLINE, medians, reap

PHASES = ("prepare", "parent", "child")


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _counting(call: Callable[[], object] | None, label: str, counts: dict[str, int]) -> Any:
    if call is None:
        return None

    def counted() -> None:
        before = _faults()
        try:
            call()
        finally:
            counts[label] = counts.get(label, 0) + _faults() - before

    return counted


def measure(forks: int, tmp: str) -> dict[str, float]:
    """In this interpreter: the median faults per fork of each callback,
    by ``"phase name"``, and of the whole fork (``"whole parent"``,
    ``"whole child"``)."""
    warnings.simplefilter("ignore", DeprecationWarning)  # threads alive at fork: known
    import atfork
    import atfork.integrations

    counts: dict[str, int] = {}
    register = atfork.atfork

    def counted_register(*calls: Any, **kw: Any) -> Any:
        name = str(kw.get("name", "?")).removeprefix("atfork.integrations.")
        given = dict(zip(PHASES, calls))
        given.update((phase, kw.pop(phase)) for phase in PHASES if phase in kw)
        counted = [_counting(given.get(phase), f"{phase} {name}", counts) for phase in PHASES]
        return register(*counted, **kw)

    atfork.atfork = counted_register  # what the integrations call
    try:
        atfork.integrations.enable(*INTEGRATIONS)
        service = build_service(tmp)
    finally:
        atfork.atfork = register
    from atfork.integrations import db
    from atfork.integrations import random as atfork_random
    from atfork.integrations import threading as atfork_threading

    db.track(service["engine"])
    atfork_random.track(service["rng"])
    atfork_threading.track(service["executor"])
    atfork_threading.track(service["lock"])

    figures: dict[str, list[int]] = defaultdict(list)
    read, write = os.pipe()
    try:
        for _ in range(forks):
            counts.clear()
            before = _faults()
            pid = os.fork()
            if pid == 0:
                try:
                    report = {k: v for k, v in counts.items() if k.startswith("child ")}
                    report["whole child"] = _faults()
                    os.write(write, json.dumps(report).encode().ljust(8192))
                finally:
                    os._exit(0)
            figures["whole parent"].append(_faults() - before)
            for label, value in counts.items():
                figures[label].append(value)
            if not select.select([read], [], [], DEADLINE)[0]:
                reap(pid, kill=True)
                raise RuntimeError(f"child {pid} sent no report within {DEADLINE} s")
            for label, value in json.loads(os.read(read, 8192)).items():
                figures[label].append(value)
            reap(pid)
    finally:
        os.close(read)
        os.close(write)
    return {label: statistics.median(values) for label, values in figures.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh interpreters per mode (5)")
    parser.add_argument("--forks", type=int, default=40, help="forks per interpreter (40)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1])))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        whole = medians(
            os.path.join(os.path.dirname(__file__), "bench_service.py"),
            [("bare",), ("all+tracked",)],
            args.rounds,
            args.forks,
            tmp,
        )
        runs: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.rounds):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(args.forks), tmp],
                capture_output=True,
                text=True,
                check=True,
                timeout=20 * DEADLINE,
            ).stdout
            for label, value in json.loads(out).items():
                runs[label].append(value)
    by_label = {label: statistics.median(values) for label, values in runs.items()}

    print(
        f"CPython {sys.version.split()[0]}, {args.rounds} interpreters x {args.forks} forks "
        "of the service process, page faults per fork, median of per-run medians"
    )
    print(f"{'':<40}{'parent':>8}{'child':>8}")
    for mode in ("bare", "all+tracked"):
        _, _, parent, child = whole[(mode,)]
        print(f"{'whole fork, ' + mode:<40}{parent:>8.0f}{child:>8.0f}")
    print(
        f"{'whole fork, all+tracked, counted':<40}"
        f"{by_label['whole parent']:>8.0f}{by_label['whole child']:>8.0f}"
    )
    print("\ncallback                                   faults")
    for phase in PHASES:
        labels = sorted(k for k in by_label if k.startswith(f"{phase} "))
        for label in labels:
            print(f"{label:<40}{by_label[label]:>8.0f}")
        total = sum(by_label[k] for k in labels)
        print(f"{'  all ' + phase + ' callbacks':<40}{total:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
