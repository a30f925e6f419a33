"""What ``python -m atfork doctor`` finds by looking at a process, without
forking it: the threads, the standard streams, every logging handler, open
database connections, thread pools, the program's locks and random
generators, pooled HTTP connections.

Nothing is imported for it: each library is looked up in
:data:`sys.modules`, where it is whenever the program made one of its
objects. The objects are found in the module globals of every module that
is not the standard library's (the program's namespace first, which also
names them: ``app.conn``) and, for the kinds the collector tracks, in one
pass over :func:`gc.get_objects`.

Each finding names what fixes it: an integration, or the ``track()`` call of
one, and is made only where that integration is off or the object is not
covered by it.
"""

from __future__ import annotations

import gc
import io
import os
import random
import sys
import sysconfig
import threading
import types
from collections.abc import Iterable
from typing import Any, NamedTuple

from atfork.integrations import _tracked_kinds
from atfork.integrations import db as db_integration
from atfork.integrations import http as http_integration
from atfork.integrations import threading as threading_integration
from atfork.integrations._imports import imported_type
from atfork.integrations.db import _postgres, _quarantine, _redis
from atfork.integrations.http import _httpcore, _urllib3

__all__ = [
    "Finding",
    "Inspection",
    "describe",
    "finding",
    "fix_text",
    "handler_stream",
    "inspect",
    "is_a",
    "on_loggers",
]

Finding = dict[str, Any]

DB_TRACK = "atfork.integrations.db.track"
THREADING_TRACK = "atfork.integrations.threading.track"
RANDOM_TRACK = "atfork.integrations.random.track"
HTTP_TRACK = "atfork.integrations.http.track"

# How many objects of one kind are looked at, at most: a report, not a dump.
LIMIT = 50


def fix_text(integration: str | None, track: str | None, what: str = "it") -> str:
    """What fixes a finding, for a person."""
    if integration and track:
        return f"enable the {integration} integration, or pass {what} to {track}()"
    if integration:
        return f"enable the {integration} integration"
    if track:
        return f"pass {what} to {track}()"
    return "see the problem: no integration repairs it"


def finding(
    check: str,
    problem: str,
    *,
    integration: str | None,
    track: str | None = None,
    what: str = "it",
    note: str = "",
    source: str = "inspection",
    stack: str = "",
) -> Finding:
    """One finding, as plain data (the report is JSON). ``note`` follows
    the fix, in parentheses."""
    fix = fix_text(integration, track, what)
    found: Finding = {
        "check": check,
        "problem": problem,
        "integration": integration,
        "track": track,
        "fix": f"{fix} ({note})" if note else fix,
        "source": source,
    }
    if stack:
        found["stack"] = stack
    return found


def describe(obj: object) -> str:
    """``module.Class``, the way a person looks a type up."""
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


# -- where the objects are --------------------------------------------------

_STDLIB = tuple(
    {os.path.normcase(sysconfig.get_paths()[key]) + os.sep for key in ("stdlib", "platstdlib")}
)


def _outside_stdlib(name: str, module: object) -> bool:
    """A module of the program or of a third-party library (not atfork's)."""
    if name == "atfork" or name.startswith(("atfork.", "_atfork")):
        return False
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        return False  # built in, frozen or a namespace: the standard library's or nothing
    path = os.path.normcase(os.path.abspath(path))
    site = "site-packages" in path or "dist-packages" in path
    return site or not path.startswith(_STDLIB)


# What a module global that is worth naming is not.
def is_a(obj: object, kinds: type | tuple[type, ...]) -> bool:
    """``isinstance`` by the object's type alone: a lazy proxy's ``__class__``
    (werkzeug's ``request``, say), which isinstance also asks, may raise or
    do work."""
    return issubclass(type(obj), kinds)


_PLAIN = (
    str,
    bytes,
    int,
    float,
    complex,
    type(None),
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
)


def _named(label: str, namespace: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    for attr, value in list(namespace.items()):  # a copy: other threads may change it
        if not is_a(value, _PLAIN):
            yield f"{label}.{attr}", value


def _globals(program: tuple[str, dict[str, Any]] | None) -> dict[int, tuple[str, Any]]:
    """Objects in module globals: id -> (the first name found, the object).
    The program's namespace comes first, then every module outside the
    standard library."""
    found: dict[int, tuple[str, Any]] = {}
    sources: list[tuple[str, dict[str, Any]]] = [program] if program else []
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict) and _outside_stdlib(name, module):
            sources.append((name, namespace))
    for label, namespace in sources:
        for name, value in _named(label, namespace):
            found.setdefault(id(value), (name, value))
    return found


_HAVE_GC = 1 << 14  # Py_TPFLAGS_HAVE_GC


class _Heap:
    """The live instances of some types, found in one pass over the
    collector's objects; for a type the collector does not track (3.9's
    ``sqlite3.Connection``), over what those objects refer to as well."""

    def __init__(self, kinds: tuple[type, ...]) -> None:
        self._objects: list[Any] = []
        if not kinds:
            return
        objects = gc.get_objects()
        found = {id(o): o for o in objects if is_a(o, kinds)}
        if any(not t.__flags__ & _HAVE_GC for t in kinds):
            referents = gc.get_referents(*objects)
            # One level further for the untracked containers among them (a
            # dict holding only untracked objects is untracked itself).
            untracked = [r for r in referents if is_a(r, (dict, list)) and not gc.is_tracked(r)]
            for obj in [*referents, *gc.get_referents(*untracked)]:
                if is_a(obj, kinds):
                    found.setdefault(id(obj), obj)
        self._objects = list(found.values())

    def of(self, *kinds: Any) -> list[Any]:
        """The instances of ``kinds`` (None among them stands for nothing)."""
        wanted = tuple(k for k in kinds if isinstance(k, type))
        return [o for o in self._objects if wanted and is_a(o, wanted)]


# -- the inspection -----------------------------------------------------------


class Inspection(NamedTuple):
    """What :func:`inspect` found: the findings, and the objects the trial
    children exercise."""

    findings: list[Finding]
    #: The other threads alive, by name.
    threads: list[str]
    #: Threads of the process that Python does not know (Linux), or None.
    foreign_threads: int | None
    #: (handler, the names of the loggers it is on), every handler once.
    handlers: list[tuple[Any, list[str]]]
    #: (name, object, its lock): the locks, conditions, semaphores, events
    #: and queues in module globals.
    locks: list[tuple[str, Any, Any]]
    #: (name, generator, kind): the random generators found.
    generators: list[tuple[str, Any, str]]


def inspect(
    enabled: dict[str, Any], program: tuple[str, dict[str, Any]] | None = None
) -> Inspection:
    """Look at this process as it is now.

    :param enabled: integration name -> whether it is enabled (True).
    :param program: (its label, its namespace) for a program that ran in a
        namespace of its own (runpy's), so that its objects are found and
        named after it.
    """
    me = threading.current_thread()
    others = [t for t in threading.enumerate() if t is not me and t.is_alive()]
    names = [t.name for t in others]
    on = {name: state is True for name, state in enabled.items()}
    named = _globals(program)
    db_kinds = _db_kinds()
    django_wrapper = _django_wrapper_type()
    futures = sys.modules.get("concurrent.futures.thread")
    executor = getattr(futures, "ThreadPoolExecutor", None)
    generator_kinds = _generator_kinds()
    urllib3_pool, *httpcore_pools = _http_pool_kinds()
    heap = _Heap(
        tuple(
            k
            for k in (
                *db_kinds.values(),
                django_wrapper,
                executor,
                *generator_kinds,
                urllib3_pool,
                *httpcore_pools,
            )
            if isinstance(k, type)
        )
    )

    findings: list[Finding] = []
    if others and not on.get("threading"):
        findings.append(
            finding(
                "threads",
                f"{len(others)} other thread(s) alive at the fork ({', '.join(names)}): only "
                "the forking thread exists in a child, so whatever these held at that instant "
                "(a lock, a module being imported, a ThreadPoolExecutor's work) stays held or "
                "half done there (bpo-6721)",
                integration="threading",
                track=THREADING_TRACK,
                what="your own locks, conditions and queues",
            )
        )
    findings += _streams_findings(others, on.get("stdio", False))
    handlers = _handlers()
    if not on.get("logging"):
        findings += _logging_findings(handlers, bool(others))
    wrappers = [w for w in heap.of(django_wrapper) if _django_connected(w)]
    # A Django wrapper answers for its driver connection: the django finding.
    under_django = {id(vars(w)["connection"]) for w in wrappers}
    findings += _db_findings(named, on.get("db", False), db_kinds, heap, under_django)
    if not on.get("django"):
        findings += _django_findings(wrappers)
    if not on.get("threading"):
        findings += _executor_findings(named, heap.of(executor))
    findings += _http_findings(
        named, on.get("http", False), heap.of(urllib3_pool), heap.of(*httpcore_pools)
    )
    if others and not on.get("prometheus"):
        findings += _prometheus_findings()
    return Inspection(
        findings,
        names,
        _foreign_threads(),
        handlers,
        _locks(named),
        _generators(named, heap.of(*generator_kinds)),
    )


def _foreign_threads() -> int | None:
    """How many threads of this process Python's threading does not know
    (started by C code): counted in /proc on Linux, else unknown."""
    try:
        total = len(os.listdir("/proc/self/task"))
    except OSError:
        return None
    return max(0, total - threading.active_count())


def _name_of(named: dict[int, tuple[str, Any]], obj: object) -> str:
    entry = named.get(id(obj))
    return entry[0] if entry is not None and entry[1] is obj else ""


def _called(named: dict[int, tuple[str, Any]], obj: object) -> str:
    """``Type name`` or ``Type`` (the name in module globals, if any)."""
    name = _name_of(named, obj)
    return f"{describe(obj)} {name}" if name else f"a {describe(obj)}"


# -- standard streams ---------------------------------------------------------


def buffered(stream: Any) -> bool:
    """The stream is an open text stream over a file descriptor, the kind
    :func:`open` and the interpreter make, with a ``BufferedWriter`` (and
    with it a lock and a buffer) between the two."""
    if type(stream) is not io.TextIOWrapper:
        return False
    try:
        buffer = stream.buffer
    except ValueError:  # detached
        return False
    return (
        type(buffer) is io.BufferedWriter
        and type(buffer.raw) is io.FileIO
        and not buffer.raw.closed
    )


def _streams_findings(others: list[threading.Thread], stdio: bool) -> list[Finding]:
    if stdio or not others:
        return []
    found = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not buffered(stream) or stream.line_buffering or stream.write_through:
            continue
        found.append(
            finding(
                "stdio",
                f"sys.{name} is block-buffered while other threads are alive: output they "
                "left in its buffer at the fork is written again by each child (when it "
                "flushes or exits), and a thread in the middle of a write leaves the "
                "stream's lock held, so the child's next print() hangs (gh-84579)",
                integration="stdio",
            )
        )
    return found


# -- logging ------------------------------------------------------------------


def _handlers() -> list[tuple[Any, list[str]]]:
    """Every handler of every logger (the root, and each logger of
    ``logging.Logger.manager.loggerDict``), with the loggers it is on; then
    the live handlers on no logger (a QueueListener's, say)."""
    logging = sys.modules.get("logging")
    if logging is None:
        return []
    loggers: list[tuple[str, Any]] = [("root", logging.getLogger())]
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            loggers.append((name, logger))
    on: dict[int, tuple[Any, list[str]]] = {}
    for name, logger in loggers:
        for handler in list(logger.handlers):
            on.setdefault(id(handler), (handler, []))[1].append(name)
    for ref in list(getattr(logging, "_handlerList", ())):
        handler = ref()
        if handler is not None:
            on.setdefault(id(handler), (handler, []))
    return list(on.values())[: LIMIT * 4]


def on_loggers(names: list[str]) -> str:
    """ "on logger 'app'", for a person."""
    if not names:
        return "on no logger"
    quoted = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
    return f"on logger{'s' if len(names) > 1 else ''} {quoted}"


def _logging_findings(handlers: list[tuple[Any, list[str]]], threaded: bool) -> list[Finding]:
    logging_handlers = sys.modules.get("logging.handlers")
    listeners = _listeners(logging_handlers)
    found = []
    last_resort = getattr(sys.modules.get("logging"), "lastResort", None)
    for handler, names in handlers:
        if handler is last_resort and not names:
            continue  # used only by a logger that finds no handler: not the program's
        where = f"{handler!r} {on_loggers(names)}"
        stream = handler_stream(handler)
        if threaded and stream is not None and _lock_of_stream(stream):
            found.append(
                finding(
                    "logging",
                    f"{where} writes to a buffered stream while other threads are alive: "
                    "a thread in the middle of a record at the fork leaves the stream's lock "
                    "held, and the child's next record through it hangs (gh-84579)",
                    integration="logging",
                )
            )
        if logging_handlers is None:
            continue
        queue = getattr(handler, "queue", None)
        if isinstance(handler, logging_handlers.QueueHandler) and any(
            listener.queue is queue for listener in listeners
        ):
            found.append(
                finding(
                    "logging",
                    f"{where} hands its records to a QueueListener thread: in a child that "
                    "thread does not exist, so the child's records are never handled",
                    integration="logging",
                )
            )
        buffer = getattr(handler, "buffer", None)
        if isinstance(handler, logging_handlers.BufferingHandler) and buffer:
            found.append(
                finding(
                    "logging",
                    f"{where} holds {len(buffer)} buffered record(s): each child emits them "
                    "once more when it flushes or exits",
                    integration="logging",
                )
            )
    return found


def handler_stream(handler: Any) -> Any:
    """The stream a handler writes to, or None (a handler of another kind)."""
    try:
        return getattr(handler, "stream", None)  # a property on logging.lastResort
    except Exception:  # noqa: BLE001  (a property that fails: no stream to look at)
        return None


def _lock_of_stream(stream: Any) -> bool:
    """The stream has a lock that a writing thread holds (a buffered one)."""
    buffer = getattr(stream, "buffer", stream) if isinstance(stream, io.TextIOBase) else stream
    return isinstance(buffer, (io.BufferedWriter, io.BufferedRandom))


def _listeners(logging_handlers: Any) -> list[Any]:
    """The QueueListeners whose thread runs (as the logging integration finds them)."""
    if logging_handlers is None:
        return []
    found = []
    for thread in threading.enumerate():
        listener = getattr(vars(thread).get("_target"), "__self__", None)
        if isinstance(listener, logging_handlers.QueueListener):
            found.append(listener)
    return found


# -- databases ----------------------------------------------------------------


def _db_kinds() -> dict[str, Any]:
    """The classes of the objects the db integration quarantines, of the
    libraries the program imported (None for the others)."""
    modules = sys.modules
    return {
        "sqlite3": getattr(modules.get("sqlite3"), "Connection", None),
        "psycopg2": _postgres._psycopg2_type(),
        "psycopg": _postgres._psycopg_type(),
        "pymysql": getattr(modules.get("pymysql.connections"), "Connection", None),
        "redis": _redis._connection_type(),
        "sqlalchemy": getattr(modules.get("sqlalchemy.engine"), "Engine", None),
        "record": getattr(modules.get("sqlalchemy.pool.base"), "_ConnectionRecord", None),
        **{f"pool{i}": t for i, t in enumerate(_postgres._pool_types())},
        **{f"holder{i}": t for i, t in enumerate(_redis._holder_types())},
    }


def _db_findings(
    named: dict[int, tuple[str, Any]],
    db: bool,
    kinds: dict[str, Any],
    heap: _Heap,
    under_django: set[int],
) -> list[Finding]:
    """The connections the db integration knows how to quarantine that are
    open and not covered, by it or by ``track()``, nor held by a Django
    wrapper (``under_django``: the django finding answers for those)."""
    pools = tuple(t for k, t in kinds.items() if k.startswith("pool"))
    holders = tuple(t for k, t in kinds.items() if k.startswith("holder"))
    if not any(isinstance(t, type) for t in kinds.values()):
        return []

    covered: set[int] = set()
    for entry in list(_quarantine._entries.values()):
        obj = entry.get()
        if obj is None:
            continue
        covered.add(id(obj))
        if holders and is_a(obj, holders):
            covered.update(map(id, _redis._connections(obj)))
        if pools and is_a(obj, pools):
            covered.update(map(id, vars(obj).get("_pool", ())))
    drivers = db_integration._drivers if db else frozenset()

    def of(kind: str) -> list[Any]:
        return heap.of(kinds[kind])

    # SQLAlchemy's pool records: each engine answers for the driver
    # connections its records hold.
    by_pool: dict[int, list[Any]] = {}
    owned: set[int] = set(under_django)
    for record in of("record"):
        conn = getattr(record, "dbapi_connection", None)
        if conn is not None:
            owned.add(id(conn))
            pool = getattr(record, "_ConnectionRecord__pool", None)
            by_pool.setdefault(id(pool), []).append(record)
    for pool in heap.of(*pools):  # psycopg_pool's: each answers for its idle connections
        owned.update(map(id, vars(pool).get("_pool", ())))
    # redis-py's pools drop inherited connections themselves: only a
    # PubSub's, a single-connection client's and a bare connection are at risk.
    pooled: set[int] = set()
    exposed: list[Any] = []
    for holder in heap.of(*holders):
        state = vars(holder)
        for name in ("_available_connections", "_in_use_connections", "_connections"):
            pooled.update(map(id, state.get(name) or ()))
        if state.get("connection") is not None:
            exposed.append(state["connection"])

    found: list[tuple[str, Any, str, str]] = []  # (driver, object, problem, kind)
    session = (
        "is open: a forked child shares its server session with the parent; the child's "
        "close() or exit ends the parent's session, and a query in both at once reads "
        "the other's rows"
    )
    for engine in of("sqlalchemy"):
        records = by_pool.get(id(engine.pool), [])
        if records and not all(id(r) in covered for r in records):
            found.append(
                (
                    "sqlalchemy",
                    engine,
                    f"{engine!r} {_name_of(named, engine)}".rstrip()
                    + f" holds {len(records)} connection(s) opened in the parent: a child "
                    "gets them from the pool, and its engine.dispose() or exit closes them "
                    "under the parent (SQLAlchemy #7815)",
                    "engine",
                )
            )
    for conn in of("sqlite3"):
        if id(conn) not in owned and id(conn) not in covered and _open(conn):
            found.append(
                (
                    "sqlite3",
                    conn,
                    f"{_called(named, conn)} is open: a child that uses it, or exits while "
                    "the parent is inside a transaction, makes the parent's COMMIT fail "
                    "with 'disk I/O error' (SQLite: How to corrupt, 2.6)",
                    "connection",
                )
            )
    for driver in ("psycopg2", "psycopg", "pymysql"):
        for conn in of(driver):
            if id(conn) not in owned and id(conn) not in covered and _open(conn):
                found.append((driver, conn, f"{_called(named, conn)} {session}", "connection"))
    for pool in heap.of(*pools):
        if id(pool) not in covered and not getattr(pool, "closed", True):
            found.append(
                (
                    "psycopg_pool",
                    pool,
                    f"{_called(named, pool)} is open: a child gets the parent's sessions "
                    "from it, and its worker threads are gone there",
                    "pool",
                )
            )
    at_risk = {id(conn): conn for conn in exposed}
    at_risk.update((id(c), c) for c in of("redis") if id(c) not in pooled)
    for conn in at_risk.values():
        if id(conn) not in covered and vars(conn).get("_sock") is not None:
            found.append(
                (
                    "redis",
                    conn,
                    f"{_called(named, conn)} is connected outside a pool (a PubSub's, a "
                    "single-connection client's or a bare one): a child that uses it takes "
                    "the parent's replies and messages",
                    "connection",
                )
            )
    findings = []
    for driver, obj, problem, kind in found[:LIMIT]:
        name = _name_of(named, obj) or f"the {kind}"
        # enable() finds every library but sqlite3 by itself, from its import
        # on; what it did not see, or sqlite3, needs track().
        by_enable = driver != "sqlite3" and driver not in drivers
        if driver == "sqlite3":
            note = "the db integration does not find sqlite3 connections by itself"
        elif by_enable:
            note = "the integration finds what is opened after it is enabled"
        else:
            note = "it was opened before the integration was enabled"
        findings.append(
            finding(
                "db",
                problem,
                integration="db" if by_enable else None,
                track=DB_TRACK,
                what=name,
                note=note,
            )
        )
    return findings


def _django_wrapper_type() -> type | None:
    found = getattr(sys.modules.get("django.db.backends.base.base"), "BaseDatabaseWrapper", None)
    return found if isinstance(found, type) else None


def _django_connected(wrapper: Any) -> bool:
    """Whether a Django wrapper holds a connection a child would inherit (an
    in-memory SQLite database is the child's own copy)."""
    if vars(wrapper).get("connection") is None:
        return False
    is_in_memory = getattr(wrapper, "is_in_memory_db", None)
    return not (is_in_memory is not None and is_in_memory())


def _django_findings(wrappers: list[Any]) -> list[Finding]:
    """Django's connected database wrappers, when the django integration is off."""
    findings = []
    for wrapper in wrappers[:LIMIT]:
        what = f"Django's {getattr(wrapper, 'alias', '?')!r} database connection"
        if getattr(wrapper, "vendor", None) == "sqlite":
            harm = (
                "a child's ORM query uses it, and a child that leaves the parent's atomic "
                "block or exits inside it makes the parent's COMMIT fail with 'disk I/O error'"
            )
        else:
            harm = (
                "a child's ORM query runs on the parent's server session, and the child's "
                "connections.close_all() ends it (Django ticket #31637)"
            )
        findings.append(
            finding(
                "django",
                f"{what} ({describe(wrapper)}) is open: {harm}",
                integration="django",
                note="it covers what connects after it is enabled",
            )
        )
    return findings


def _prometheus_findings() -> list[Finding]:
    """prometheus_client in multiprocess mode while other threads are alive
    (without them, no other thread can hold its lock at the fork)."""
    values = sys.modules.get("prometheus_client.values")
    if not getattr(getattr(values, "ValueClass", None), "_multiprocess", False):
        return []
    return [
        finding(
            "prometheus",
            "prometheus_client is in multiprocess mode (PROMETHEUS_MULTIPROC_DIR) while other "
            "threads are alive: its metric values share one lock, and a child forked while "
            "one of them updates a metric hangs on its own first update "
            "(prometheus/client_python issue 431)",
            integration="prometheus",
        )
    ]


def _open(conn: Any) -> bool:
    """Whether a driver connection is open (each driver says it its own way)."""
    closed = getattr(conn, "closed", None)
    if isinstance(closed, (bool, int)):  # psycopg2 (an int), psycopg
        return not closed
    is_open = getattr(conn, "open", None)
    if isinstance(is_open, bool):  # PyMySQL
        return is_open
    try:
        conn.total_changes  # noqa: B018  (sqlite3: raises once closed)
    except Exception:  # noqa: BLE001  (ProgrammingError: closed)
        return False
    return True


# -- HTTP clients ---------------------------------------------------------------


def _http_pool_kinds() -> tuple[type | None, ...]:
    """urllib3's pool class, then httpcore's two (requests and botocore pool
    through urllib3, httpx through httpcore), of the libraries the program
    imported (None for the others)."""
    return (
        imported_type("urllib3.connectionpool", "HTTPConnectionPool"),
        imported_type("httpcore", "ConnectionPool"),
        imported_type("httpcore", "AsyncConnectionPool"),
    )


def _http_pools(obj: Any, quarantine: object) -> list[Any]:
    """The pools an object of the http integration's kinds answers for, told
    by its quarantine there (a urllib3 connection answers for itself alone)."""
    if quarantine in (_urllib3._quarantine_pool, _httpcore.quarantine_pool):
        return [obj]
    if quarantine is _urllib3._quarantine_manager:
        return _urllib3._pools(obj)
    if quarantine is _urllib3._quarantine_holder:
        return [pool for manager in _urllib3._managers(obj) for pool in _urllib3._pools(manager)]
    if quarantine is _httpcore._quarantine_holder:
        return _httpcore._pools(obj)
    return []


def _http_covered() -> set[int]:
    """The ids of the connections and pools the http integration quarantines
    in a child: those it found, and those of what was given to ``track()``."""
    covered: set[int] = set()
    for entry in list(http_integration._registry.entries.values()):
        obj = entry.get()
        if obj is not None:
            covered.add(id(obj))
            covered.update(map(id, _http_pools(obj, entry.quarantine)))
    return covered


def _http_owners(named: dict[int, tuple[str, Any]]) -> dict[int, Any]:
    """pool id -> the client, session or pool in module globals that holds
    it, so that a finding names what the program has."""
    kinds = []
    for module, name, quarantine in (*_urllib3.KINDS, *_httpcore.KINDS):
        kind = imported_type(module, name)
        if kind is not None:
            kinds.append((kind, quarantine))
    owners: dict[int, Any] = {}
    for _, obj in named.values():
        for kind, quarantine in kinds:
            if is_a(obj, kind):
                for pool in _http_pools(obj, quarantine):
                    owners.setdefault(id(pool), obj)
                break
    return owners


def _socket_open(sock: Any) -> bool:
    """Whether a connection's socket (or TLS wrapper) has a descriptor."""
    try:
        return sock is not None and sock.fileno() >= 0
    except Exception:  # noqa: BLE001  (a socket wrapper that fails once closed: closed)
        return False


def _origin(scheme: Any, host: Any, port: Any) -> str:
    """``scheme://host:port``, from str or bytes (httpcore's ``Origin``); a
    urllib3 pool made without a port has None, its scheme's default."""
    text = [
        part.decode("ascii", "replace") if isinstance(part, bytes) else part
        for part in (scheme, host)
    ]
    return f"{text[0]}://{text[1]}" + ("" if port is None else f":{port}")


def _pooled(
    urllib3_pools: list[Any], httpcore_pools: list[Any], covered: set[int]
) -> list[tuple[Any, list[str], str]]:
    """(pool, the origin of each connection in it whose socket is open, the
    library's issue), for the pools and connections not in ``covered``."""
    found = []
    for pool in urllib3_pools:
        if id(pool) not in covered:
            where = _origin(pool.scheme, pool.host, pool.port)
            idle = [
                c
                for c in _urllib3._idle(pool)
                if id(c) not in covered and _socket_open(getattr(c, "sock", None))
            ]
            found.append((pool, [where] * len(idle), " (urllib3 #850)"))
    for pool in httpcore_pools:
        if id(pool) not in covered:
            origins = []
            for conn, protocol, sock in _httpcore.connected(pool):
                origin = vars(conn).get("_origin") or vars(protocol).get("_origin")
                if _socket_open(sock) and origin is not None:
                    origins.append(_origin(origin.scheme, origin.host, origin.port))
            found.append((pool, origins, ""))
    return [entry for entry in found if entry[1]]


def _http_findings(
    named: dict[int, tuple[str, Any]],
    http: bool,
    urllib3_pools: list[Any],
    httpcore_pools: list[Any],
) -> list[Finding]:
    """The pooled HTTP connections with an open socket that the http
    integration does not cover, one finding per client (or pool)."""
    if not urllib3_pools and not httpcore_pools:
        return []
    owners = _http_owners(named)
    by_owner: dict[int, tuple[Any, list[str], str]] = {}
    for pool, origins, issue in _pooled(urllib3_pools, httpcore_pools, _http_covered()):
        owner = owners.get(id(pool), pool)
        by_owner.setdefault(id(owner), (owner, [], issue))[1].extend(origins)
    findings = []
    for owner, origins, issue in list(by_owner.values())[:LIMIT]:
        findings.append(
            finding(
                "http",
                f"{_called(named, owner)} holds {len(origins)} pooled connection(s) to "
                f"{', '.join(dict.fromkeys(origins))}: a child's next request there goes out "
                "on the parent's connection, and over TLS the parent's next request then "
                f"fails; a child that shuts one down ends the parent's{issue}",
                integration=None if http else "http",
                track=HTTP_TRACK,
                what=_name_of(named, owner) or "its client",
                note="they were opened before the integration was enabled"
                if http
                else "the integration finds the clients made after it is enabled",
            )
        )
    return findings


# -- locks and thread pools ---------------------------------------------------


def _lock_types() -> tuple[type, ...]:
    kinds: list[type] = [
        type(threading.Lock()),
        type(threading.RLock()),
        threading.Condition,
        threading.Semaphore,
        threading.Event,
    ]
    py_rlock = vars(threading).get("_PyRLock")
    if isinstance(py_rlock, type):
        kinds.append(py_rlock)
    queue = sys.modules.get("queue")
    if queue is not None:
        kinds.append(queue.Queue)
    return tuple(kinds)


def _locks(named: dict[int, tuple[str, Any]]) -> list[tuple[str, Any, Any]]:
    """The locks (and the objects with one) in module globals, with their lock."""
    kinds = _lock_types()
    found = []
    for name, obj in named.values():
        if is_a(obj, kinds):
            try:
                kind = _tracked_kinds.kind_of(obj)
            except TypeError:  # a Condition over another kind of lock, say
                continue
            found.append((name, obj, obj if kind.lock_of is None else kind.lock_of(obj)))
    return found[: LIMIT * 2]


def _executor_findings(named: dict[int, tuple[str, Any]], executors: list[Any]) -> list[Finding]:
    found = []
    for executor in executors[:LIMIT]:
        workers = len(getattr(executor, "_threads", ()) or ())
        if workers and threading_integration._tracked(executor) is None:
            found.append(
                finding(
                    "threading",
                    f"{_called(named, executor)} has {workers} worker thread(s): in a child "
                    "it counts the parent's idle workers, so submit() may start none and the "
                    "work never runs, or runs work queued in the parent a second time",
                    integration="threading",
                    track=THREADING_TRACK,
                    what=_name_of(named, executor) or "the executor",
                )
            )
    return found


# -- random generators --------------------------------------------------------


def _generator_kinds() -> tuple[type, ...]:
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is None:
        return (random.Random,)
    return (random.Random, numpy_random.Generator, numpy_random.RandomState)


def _generators(named: dict[int, tuple[str, Any]], found: list[Any]) -> list[tuple[str, Any, str]]:
    """The random generators a child would share with its siblings: every
    ``random.Random`` but the standard library's own and ``SystemRandom``,
    every numpy ``Generator`` and ``RandomState`` but numpy's global one."""
    # The standard library's: the global instance (CPython reseeds it) and
    # tempfile's (it reseeds itself when the pid changes).
    skip = {id(vars(random).get("_inst"))}
    tempfile = sys.modules.get("tempfile")
    sequence = vars(tempfile).get("_name_sequence") if tempfile else None
    if sequence is not None:
        skip.add(id(vars(sequence).get("_rng")))
    skip.add(id(getattr(sys.modules.get("numpy.random.mtrand"), "_rand", None)))
    chosen = []
    for rng in found:
        if id(rng) in skip or isinstance(rng, random.SystemRandom):
            continue
        kind = "random" if isinstance(rng, random.Random) else type(rng).__name__
        chosen.append((_name_of(named, rng) or f"a {describe(rng)}", rng, kind))
    chosen.sort(key=lambda entry: entry[0])
    return chosen[:LIMIT]
