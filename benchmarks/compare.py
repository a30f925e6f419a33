"""The service benchmark and the cost of ``import atfork``, for two atfork
source trees side by side, in one run.

Every mode of ``bench_service.py`` runs with this tree's atfork and with
the one of ``BEFORE`` (a checkout of another commit: ``git worktree add
/tmp/atfork-before COMMIT``), the runs of both interleaved over shuffled
rounds, each in a fresh interpreter whose ``sys.path`` starts with its
tree; the bare fork imports no atfork and runs once per round. Then, as
many times for each tree, alternately, a fresh interpreter imports atfork
alone, and the modules it added and the time it took are noted. The report
gives the medians, and the ratios to the bare fork of each tree. Needs what
``bench_service.py`` needs. Run ``python benchmarks/compare.py --help``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_service import MODES, measure
from fork_latency import medians

HERE = Path(__file__).resolve().parent
AFTER = str(HERE.parent)

# What a fresh interpreter prints for the import figures: the modules
# ``import atfork`` added, and the seconds it took.
IMPORT = (
    "import sys, time\n"
    "before = len(sys.modules)\n"
    "start = time.perf_counter()\n"
    "import atfork\n"
    "print(len(sys.modules) - before, time.perf_counter() - start)\n"
)


def import_figures(tree: str) -> tuple[float, float]:
    """Modules added and seconds taken by ``import atfork`` from ``tree``,
    in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run(
        [sys.executable, "-c", IMPORT], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    if not out:
        raise SystemExit(f"no figures from {tree}")
    return float(out[0]), float(out[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", nargs="?", help="the other atfork source tree (its root folder)")
    parser.add_argument("--rounds", type=int, default=5, help="shuffled rounds (5)")
    parser.add_argument("--forks", type=int, default=40, help="forks per run (40)")
    parser.add_argument("--modes", nargs="+", choices=MODES[1:], default=list(MODES[1:]))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        tree, mode, forks, tmp = args.child
        if tree != "-":
            sys.path.insert(0, tree)  # before atfork is imported, by measure()
        print(*measure(mode, int(forks), tmp))
        return 0

    import tempfile

    before = str(Path(args.before or ".").resolve())
    if args.before is None or not Path(before, "atfork", "__init__.py").is_file():
        parser.error(f"{before} holds no atfork package")
    trees = {"before": before, "after": AFTER}
    cases = [("-", "bare")] + [(tree, mode) for mode in args.modes for tree in trees.values()]
    with tempfile.TemporaryDirectory() as tmp:
        median = medians(__file__, cases, args.rounds, args.forks, tmp)
    imports: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds * 3):
        for name, tree in trees.items():
            imports[name].append(import_figures(tree))

    bare = median[("-", "bare")]
    print(
        f"CPython {sys.version.split()[0]}, {args.rounds} rounds x {args.forks} forks of a "
        f"service process, median of per-run medians; before: {before}"
    )
    print(f"bare fork: parent {bare[0] / 1e3:.1f} us, child-ready {bare[1] / 1e3:.1f} us")
    print(f"{'':<13}{'before':^32}{'after':^32}")
    columns = f"{'parent':>8}{'child':>8}{'faults':>8}{'faults':>8}"
    print(f"{'mode':<13}{columns}{columns}")
    units = f"{'/ bare':>8}{'/ bare':>8}{'parent':>8}{'child':>8}"
    print(f"{'':<13}{units}{units}")
    for mode in args.modes:
        row = f"{mode:<13}"
        for tree in trees.values():
            parent, child, parent_faults, child_faults = median[(tree, mode)]
            row += f"{parent / bare[0]:>8.2f}{child / bare[1]:>8.2f}"
            row += f"{parent_faults:>8.0f}{child_faults:>8.0f}"
        print(row)
    print(f"\nimport atfork, {args.rounds * 3} fresh interpreters each, medians")
    for name, runs in imports.items():
        modules = statistics.median(m for m, _ in runs)
        seconds = statistics.median(s for _, s in runs)
        print(f"{name:<8}{modules:>4.0f} modules added{seconds * 1e3:>8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
