"""Fork latency with the db integration: two SQLAlchemy engines and a
psycopg_pool pool tracked, against a bare fork of the same process.

Both modes build the same objects in a fresh interpreter (two engines, each
with three pooled psycopg2 connections open, and a psycopg_pool pool of four
open psycopg connections) so that every mode copies the same memory; in the
``db`` mode ``atfork.integrations.db`` is enabled and the three are tracked.
It measures:

* parent: from the ``os.fork()`` call to its return in the parent;
* child-ready: from the ``os.fork()`` call to the child having run its
  callbacks (here: quarantined nine connections and two pools' records);
* the page faults the parent took per fork.

The modes take turns over several rounds in shuffled order; the report gives
the median over rounds of each run's median, and the ratio db / bare.
Needs the PostgreSQL of the tests (``ATFORK_PG_*``, see
``tests/integrations/db_servers.py``). Run
``python benchmarks/bench_db.py --help``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from fork_latency import Figures, medians, report_against_bare, time_forks  # the same measurement

MODES = ("bare", "db")


def _settings() -> dict[str, str]:
    env = os.environ.get
    return {
        "host": env("ATFORK_PG_HOST", "127.0.0.1"),
        "port": env("ATFORK_PG_PORT", "5432"),
        "user": env("ATFORK_PG_USER", "postgres"),
        "password": env("ATFORK_PG_PASSWORD", ""),
        "dbname": env("ATFORK_PG_DATABASE", "test"),
    }


def measure(mode: str, forks: int) -> Figures:
    """In this interpreter: build the objects and return the median latencies
    (ns) and page faults of ``fork_latency.time_forks``."""
    import psycopg_pool
    import sqlalchemy as sa

    from atfork.integrations import db

    # psycopg_pool's worker threads are alive at every fork.
    warnings.simplefilter("ignore", DeprecationWarning)
    if mode == "db":
        db.enable()
    pg = _settings()
    conninfo = " ".join(f"{k}={v}" for k, v in pg.items() if v)
    engines = [sa.create_engine("postgresql+psycopg2://", connect_args=pg) for _ in range(2)]
    for engine in engines:
        held = [engine.connect() for _ in range(3)]
        for conn in held:
            conn.execute(sa.text("select 1"))
            conn.close()
    pool = psycopg_pool.ConnectionPool(conninfo, min_size=4, open=True)
    pool.wait()
    if mode == "db":
        for target in (*engines, pool):
            db.track(target)
    figures = time_forks(forks)
    pool.close()
    for engine in engines:
        engine.dispose()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--forks", type=int, default=200, help="forks per run (200)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(*measure(args.child[0], int(args.child[1])))
        return 0

    by_case = medians(__file__, [(mode,) for mode in MODES], args.rounds, args.forks)
    median = {mode: by_case[(mode,)] for mode in MODES}

    what = "two engines (3 connections each) and a pool (4 connections)"
    report_against_bare(what, args.rounds, args.forks, median, "db")
    return 0


if __name__ == "__main__":
    sys.exit(main())
