"""Many children query through one tracked engine or pool while the parent
keeps querying it: with atfork, no parent error and no crossed row."""

from __future__ import annotations

import json

import pytest
from db_servers import require, scenario, source

from atfork.testing import run_python

STRESS = """
KIND, CHILDREN, QUERIES = {kind!r}, {children}, {queries}
if KIND == "engine":
    import sqlalchemy as sa
    target = sa.create_engine(pg_url("psycopg2"), pool_size=3, max_overflow=2, pool_timeout=2)
    statement = sa.text("select cast(:token as text), pg_backend_pid()")

    def ask(token):
        with target.connect() as c:
            return c.execute(statement, {{"token": token}}).one()[0]

    def hold():
        held = target.connect()
        held.begin()
        held.execute(statement, {{"token": "held"}})
        return held

    def end(held):
        held.commit()
        held.close()

    def drop():
        target.dispose()
else:
    import psycopg_pool
    target = psycopg_pool.ConnectionPool(
        pg_conninfo(), min_size=2, max_size=4, open=True, timeout=2
    )

    def ask(token):
        with target.connection() as c:
            return c.execute("select %s::text, pg_backend_pid()", (token,)).fetchone()[0]

    def hold():
        held = target.getconn()
        held.execute("begin")
        held.execute("select 'held'")
        return held

    def end(held):
        held.execute("commit")
        target.putconn(held)

    def drop():
        target.close()
if ATFORK:
    db.track(target)

tally = {{"asked": 0, "crossed": 0, "errors": []}}

def safely(action, *args):
    try:
        return action(*args)
    except Exception as exc:
        tally["errors"].append(error_name(exc))

def asks(counts, who, n, patience=None):
    # n queries, counted in counts with crossed replies and errors; after
    # more than patience errors, give up.
    for _ in range(n):
        token = "%s-%d" % (who, counts["asked"])
        counts["asked"] += 1
        try:
            if ask(token) != token:
                counts["crossed"] += 1
        except Exception as exc:
            counts["errors"].append(error_name(exc))
            if patience is not None and len(counts["errors"]) > patience:
                break

def parent_asks(n):
    asks(tally, "parent", n)

def child_main(number, held):
    def child(send):
        mine = {{"asked": 0, "crossed": 0, "errors": [], "held": None}}
        asks(mine, "child%d" % number, QUERIES, patience=2)
        if held is not None:  # the parent's connection, mid-transaction
            try:
                if KIND == "engine":
                    held.execute(statement, {{"token": "stolen"}})
                else:
                    held.execute("select 'stolen'")
                mine["held"] = "worked"
            except Exception as exc:
                mine["held"] = error_name(getattr(exc, "orig", None) or exc)
        if number % 3 == 0:
            drop()  # dispose() the engine, close() the pool
        gc.collect()
        send(mine)
        if number % 2:
            # Closed first: on 3.13 psycopg_pool's finaliser waits 5 s per
            # worker thread at interpreter exit (fork or no fork).
            drop()
            sys.exit(0)  # a normal interpreter exit
    return child

children = []
held = None
for number in range(CHILDREN):
    if number % 4 == 0:
        held = safely(hold)
    children.append(fork(child_main(number, held)))
    parent_asks(3)
    if held is not None and number % 4 == 1:
        safely(end, held)
        held = None
if held is not None:
    safely(end, held)
deadline = time.monotonic() + 30
waiting = set(pid for pid, _ in children)
while waiting and time.monotonic() < deadline:
    parent_asks(1)
    for pid in list(waiting):
        if os.waitpid(pid, os.WNOHANG)[0]:
            waiting.discard(pid)
    time.sleep(0.01)
reports = [read_report(read) for pid, read in children]
parent_asks(5)
drop()
report({{"parent": tally, "children": reports}})
"""


# The driver modules each kind of target needs.
MODULES = {"engine": ("sqlalchemy", "psycopg2"), "pool": ("psycopg_pool",)}


def _body(kind: str) -> str:
    return STRESS.format(kind=kind, children=12, queries=20)


@pytest.mark.parametrize("kind", ["engine", "pool"])
def test_children_and_parent_share_one_tracked_engine_or_pool(kind: str) -> None:
    """Twelve children query through the parent's tracked engine (or
    psycopg_pool pool), dispose of it or exit normally, and try the parent's
    connection held mid-transaction, while the parent keeps querying: zero
    parent errors, zero crossed rows anywhere."""
    require("postgresql", *MODULES[kind])
    result = scenario(_body(kind), atfork=True, timeout=90)
    parent, children = result["parent"], result["children"]
    assert {"crossed": 0, "errors": []} == {k: parent[k] for k in ("crossed", "errors")}
    assert parent["asked"] >= 12 * 3 + 5
    assert 12 == len(children)
    for child in children:
        assert {"asked": 20, "crossed": 0, "errors": []} == {
            k: child[k] for k in ("asked", "crossed", "errors")
        }
    holders = [child["held"] for child in children if child["held"] is not None]
    assert holders
    assert {"InheritedConnectionError"} == set(holders)


@pytest.mark.parametrize("kind", ["engine", "pool"])
def test_without_atfork_the_same_load_fails(kind: str) -> None:
    """The same load without atfork breaks: parent errors, crossed rows or a
    hang (parent and child waiting for one reply)."""
    require("postgresql", *MODULES[kind])
    # A hang is one of the failures: short deadlines for the script and
    # for its children (which hold its output pipes).
    run = run_python(source(_body(kind), atfork=False, child_alarm=4), timeout=5)
    if run.timed_out:
        return
    assert 0 == run.returncode, run.stderr
    result = json.loads(run.stdout.splitlines()[-1][len("RESULT ") :])
    parent, children = result["parent"], result["children"]
    failures = parent["crossed"] + len(parent["errors"])
    failures += sum(c["crossed"] + len(c["errors"]) for c in children if c)
    assert failures > 0, result
