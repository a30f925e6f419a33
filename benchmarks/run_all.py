"""Run every benchmark of this folder and keep what each printed.

Each benchmark's report goes to the terminal and to
``benchmarks/results/NAME.txt``, which the documentation's performance page
includes as it is: the figures there are the last run's output, never copied
by hand. Run ``python benchmarks/run_all.py [NAME ...]`` (``tox -e bench``);
with names, only those run.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHMARKS = (
    "fork_latency",
    "bench_threading",
    "bench_logging",
    "bench_random",
    "bench_db",
    "bench_http",
    "bench_service",
    "bench_faults",
    "bench_pages",
)
#: Seconds one benchmark may take before the run fails.
DEADLINE = 3600


def run(name: str) -> str:
    """Run benchmark ``name``, echoing its report; return the report with a
    line saying where and when it was measured."""
    result = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    if result.returncode:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"{name} failed with exit status {result.returncode}")
    day = datetime.date.today().isoformat()
    where = f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}"
    report = f"{result.stdout.rstrip()}\n\n(measured {day} on {where})\n"
    print(f"== {name}\n{report}", flush=True)
    return report


def main(argv: list[str]) -> int:
    unknown = sorted(set(argv) - set(BENCHMARKS))
    if unknown:
        known = ", ".join(BENCHMARKS)
        print(f"unknown benchmark: {', '.join(unknown)} (known: {known})", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in argv or BENCHMARKS:
        (RESULTS / f"{name}.txt").write_text(run(name), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
