"""Fork cost in a typical service process: each integration, and all of them.

Each run builds, in a fresh interpreter, what a gunicorn or Celery master
holds when it forks its workers: numpy, SQLAlchemy and psycopg imported,
logging configured (a stream handler and two file handlers), a SQLAlchemy
engine with three pooled PostgreSQL connections, a used thread pool
executor, three idle threads, a numpy generator, a lock, and about 100 MB of
data (a numpy array and a few hundred thousand small Python objects). Then
it forks, and measures per fork:

* parent: from the ``os.fork()`` call to its return in the parent;
* child-ready: from the ``os.fork()`` call to the child having run its
  callbacks (it reads the clock as soon as ``os.fork()`` returns in it);
* the page faults the parent takes, and those the child takes until it is
  ready (each page written after a fork is copied: most of the cost).

Modes: ``bare`` (atfork never imported), ``import`` (imported, nothing
enabled), each integration alone (enabled before the service is built, as
``ATFORK_INTEGRATIONS`` does), ``all`` of them, and ``all+tracked`` (the
engine, the generator, the executor and the lock also given to
``track()``). The modes take turns over several rounds in shuffled order;
the report gives the median over rounds of each run's median, and ratios to
the bare fork. Needs the PostgreSQL of the tests (``ATFORK_PG_*``). Run
``python benchmarks/bench_service.py --help``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import warnings
from typing import Any

from fork_latency import Figures, medians, time_forks  # the same measurement

INTEGRATIONS = ("logging", "stdio", "threading", "random", "db")
MODES = ("bare", "import", *INTEGRATIONS, "all", "all+tracked")


def _pg_url() -> str:
    env = os.environ.get
    user, password = env("ATFORK_PG_USER", "postgres"), env("ATFORK_PG_PASSWORD", "")
    host, port = env("ATFORK_PG_HOST", "127.0.0.1"), env("ATFORK_PG_PORT", "5432")
    database = env("ATFORK_PG_DATABASE", "test")
    return f"postgresql+psycopg://{user}:{password}@{host}:{port}/{database}"


def build_service(tmp: str) -> dict[str, Any]:
    """What a service's master process holds when it forks."""
    import logging
    import logging.handlers
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import sqlalchemy as sa

    logging.basicConfig(level=logging.INFO)
    log = logging.getLogger("service")
    log.addHandler(logging.FileHandler(os.path.join(tmp, "service.log")))
    log.addHandler(logging.handlers.RotatingFileHandler(os.path.join(tmp, "access.log")))
    log.propagate = False
    engine = sa.create_engine(_pg_url(), pool_size=3)
    held = [engine.connect() for _ in range(3)]
    for conn in held:
        conn.execute(sa.text("select 1"))
    for conn in held:
        conn.close()
    executor = ThreadPoolExecutor(4)
    list(executor.map(abs, range(-8, 0)))
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    log.info("service ready")
    return {
        "engine": engine,
        "executor": executor,
        "rng": np.random.default_rng(),
        "lock": threading.Lock(),
        "threads": threads,
        "array": np.ones(5_000_000),  # 40 MB
        "records": [{"id": i, "name": f"user {i}"} for i in range(300_000)],
    }


def set_up(mode: str, tmp: str) -> dict[str, Any]:
    """Enable what ``mode`` enables, build the service, and in
    ``all+tracked`` track its objects; return the service."""
    # Forks with threads alive warn on 3.12+; the benchmark knows.
    warnings.simplefilter("ignore", DeprecationWarning)
    if mode != "bare":
        import atfork.integrations

        names = INTEGRATIONS if mode.startswith("all") else (mode,) if mode != "import" else ()
        atfork.integrations.enable(*names)
    service = build_service(tmp)
    if mode == "all+tracked":
        from atfork.integrations import db
        from atfork.integrations import random as atfork_random
        from atfork.integrations import threading as atfork_threading

        db.track(service["engine"])
        atfork_random.track(service["rng"])
        atfork_threading.track(service["executor"])
        atfork_threading.track(service["lock"])
    return service


def measure(mode: str, forks: int, tmp: str) -> Figures:
    """In this interpreter: set up ``mode``, build the service, time its forks."""
    set_up(mode, tmp)
    return time_forks(forks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="shuffled rounds (7)")
    parser.add_argument("--forks", type=int, default=60, help="forks per run (60)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(*measure(args.child[0], int(args.child[1]), args.child[2]))
        return 0

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        by_case = medians(__file__, [(m,) for m in args.modes], args.rounds, args.forks, tmp)
    median = {mode: by_case[(mode,)] for mode in args.modes}
    base = median.get("bare")
    print(
        f"CPython {sys.version.split()[0]}, {args.rounds} rounds x {args.forks} forks of a "
        "service process, median of per-run medians"
    )
    print(
        f"{'mode':<13}{'parent us':>10}{'child us':>10}{'parent':>8}{'child':>8}"
        f"{'faults':>8}{'faults':>8}"
    )
    print(f"{'':<13}{'':>10}{'':>10}{'/ bare':>8}{'/ bare':>8}{'parent':>8}{'child':>8}")
    for mode in args.modes:
        parent, child, parent_faults, child_faults = median[mode]
        ratios = f"{parent / base[0]:>8.2f}{child / base[1]:>8.2f}" if base else f"{'':>8}{'':>8}"
        print(
            f"{mode:<13}{parent / 1e3:>10.1f}{child / 1e3:>10.1f}{ratios}"
            f"{parent_faults:>8.0f}{child_faults:>8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
