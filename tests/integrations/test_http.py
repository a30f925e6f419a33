"""The http integration: each fork failure of requests/urllib3, httpx and
botocore reproduced without atfork and gone with
``atfork.integrations.http``, against real local HTTP and HTTPS servers;
and its API.

Every scenario runs twice in fresh interpreters (see ``http_servers``): the
run without atfork must show the library's real failure, so that these tests
can fail. The interleavings are arranged with the servers' ``/hold`` and
``/_wait`` paths and with SIGSTOP, never by sleeping.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from free_threading import FREE_THREADED
from http_servers import Servers, scenario, start

import atfork.integrations
from atfork._registry import registry
from atfork.integrations import PRIORITY_HTTP, http
from atfork.testing import run_in_child, run_python

LIBRARIES = ["requests", "httpx"]
SCHEMES = ["HTTP", "HTTPS"]
# What the parent's next request raises once a child used its TLS
# connection: the library's error, with OpenSSL's reason under it.
TLS_ERROR = {"requests": "SSLError", "httpx": "ReadError", "botocore": "SSLError"}
BAD_RECORD = "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"


def tls_failure(library: str, outcome: dict[str, Any]) -> bool:
    """Whether ``outcome`` is the TLS failure of ``library``'s parent."""
    error = str(outcome.get("error", ""))
    return error.startswith(TLS_ERROR[library]) and BAD_RECORD in error


def require(*modules: str) -> None:
    """Skip unless every module is installed (looked up, not imported: the
    client libraries are imported only in the scenarios' interpreters)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pyproject.toml's test extra)")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The local HTTP and HTTPS servers, for every test of this module."""
    require("trustme")
    with start(tmp_path_factory.mktemp("http-servers")) as running:
        yield running


@pytest.fixture(autouse=True)
def _http_off() -> Iterator[None]:
    """Each test starts and ends with the integration off and nothing tracked."""
    http.disable()
    http._registry.entries.clear()
    yield
    http.disable()
    http._registry.entries.clear()


# -- the API ---------------------------------------------------------------------------


def test_http_is_a_builtin_integration() -> None:
    """``http`` is listed and enabled by name like every built-in."""
    assert "http" in atfork.integrations.BUILTIN
    assert "http" in atfork.integrations.available()
    assert atfork.integrations.get("http") is http  # type: ignore[comparison-overlap]
    atfork.integrations.enable("http")
    assert http.is_enabled()


def test_enable_and_disable_are_idempotent() -> None:
    """enable() and disable() may be called any number of times."""
    assert not http.is_enabled()
    http.enable()
    http.enable()
    assert http.is_enabled()
    http.disable()
    http.disable()
    assert not http.is_enabled()


def test_enable_registers_one_hook_at_the_http_priority() -> None:
    """The fork hook is registered once, through atfork.atfork(), with
    PRIORITY_HTTP; disable() removes it when nothing is tracked."""
    http.enable()
    http.enable()
    hooks = [h for h in registry.hooks() if "atfork.integrations.http" in repr(h)]
    assert 1 == len(hooks)
    assert f"priority={PRIORITY_HTTP}" in repr(hooks[0])
    http.disable()
    assert not [h for h in registry.hooks() if "atfork.integrations.http" in repr(h)]


@pytest.mark.parametrize(
    "bad", [object(), "https://example.org", 42, None, sys, http], ids=lambda v: type(v).__name__
)
def test_track_refuses_what_it_cannot_quarantine(bad: object) -> None:
    """track() of something that is no pool or client is a TypeError at the
    call, naming what it takes and what it got."""
    with pytest.raises(TypeError, match=r"track\(\) takes a urllib3 PoolManager.* not "):
        http.track(bad)
    assert not [h for h in registry.hooks() if "atfork.integrations.http" in repr(h)]


class _Pooled:
    """Stands for a pool: weakly referenceable."""


def test_prepare_copies_the_registry_once_per_change() -> None:
    """On the free-threaded build prepare copies the registry, only when it
    changed since the last copy, and the child's pass reads that copy and
    gets a dict of its own, so it never touches the parent's; with the GIL
    the child reads the registry itself."""
    reg = http._registry
    seen: list[object] = []
    pool = _Pooled()
    reg.register(pool, lambda obj, neutralise: seen.append(obj), auto=False, keep=True)
    reg.take()
    first = reg._taken[1]
    reg.take()
    assert first is reg._taken[1]
    other = _Pooled()
    reg.register(other, lambda obj, neutralise: seen.append(obj), auto=False, keep=True)
    reg.take()
    assert first is not reg._taken[1]
    http._ensure_hook()
    parents = reg.entries

    def child() -> tuple[int, bool, bool]:
        return len(seen), reg.entries is not parents, set(reg.entries) == set(parents)

    assert (2, FREE_THREADED, True) == run_in_child(child)
    assert [] == seen  # the parent quarantined nothing


IMPORTS_NOTHING = """
import sys
from atfork.integrations import http
http.enable()
libraries = ["urllib3", "requests", "httpx", "httpcore", "botocore", "anyio"]
print(sorted(name for name in libraries if name in sys.modules))
"""


def test_enable_imports_no_client_library() -> None:
    """enable() imports none of the libraries it covers."""
    run = run_python(IMPORTS_NOTHING, timeout=60)
    assert 0 == run.returncode, run.stderr
    assert "[]" == run.stdout.strip()


TRACK = """
import json, requests, urllib3, httpx, httpcore, botocore.session
from atfork.integrations import http
session = requests.Session()
client = httpx.Client()
aclient = httpx.AsyncClient()
boto = botocore.session.get_session().create_client(
    "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
objects = [urllib3.PoolManager(), urllib3.HTTPConnectionPool("127.0.0.1"),
    urllib3.HTTPSConnectionPool("127.0.0.1"), urllib3.connection.HTTPConnection("127.0.0.1"),
    urllib3.ProxyManager("http://127.0.0.1:1"), session, session.adapters["https://"],
    client, aclient, httpx.HTTPTransport(), httpx.AsyncHTTPTransport(),
    httpcore.ConnectionPool(), httpcore.AsyncConnectionPool(), boto,
    boto._endpoint.http_session]
same = [http.track(obj) is obj for obj in objects]
print(json.dumps({"same": all(same), "count": len(http._registry.entries),
    "expected": len(objects), "enabled": http.is_enabled()}))
"""


def test_track_takes_every_pool_and_client() -> None:
    """track() takes each pool, client and transport it documents and
    returns it, without enabling discovery."""
    require("requests", "httpx", "botocore")
    run = run_python(TRACK, timeout=60)
    assert 0 == run.returncode, run.stderr
    found = __import__("json").loads(run.stdout)
    assert {"same": True, "count": found["expected"], "enabled": False} == {
        k: found[k] for k in ("same", "count", "enabled")
    }


DISABLE = """
import json, urllib3, httpcore
from atfork.integrations import http
http.enable()
wrapped = [getattr(urllib3.connection.HTTPConnection.__init__, "__atfork_http__", False),
    getattr(httpcore.ConnectionPool.__init__, "__atfork_http__", False)]
found = urllib3.connection.HTTPConnection("127.0.0.1")
tracked = http.track(urllib3.PoolManager())
before = len(http._registry.entries)
http.disable()
unwrapped = [getattr(urllib3.connection.HTTPConnection.__init__, "__atfork_http__", False),
    getattr(httpcore.ConnectionPool.__init__, "__atfork_http__", False)]
print(json.dumps({"wrapped": wrapped, "unwrapped": unwrapped, "before": before,
    "after": len(http._registry.entries)}))
"""


def test_disable_removes_the_wrappers_and_keeps_what_was_tracked() -> None:
    """disable() removes the constructor wrappers and forgets the objects
    enable() found; tracked ones stay covered."""
    require("urllib3", "httpcore")
    run = run_python(DISABLE, timeout=60)
    assert 0 == run.returncode, run.stderr
    assert {"wrapped": [True, True], "unwrapped": [False, False], "before": 2, "after": 1} == (
        __import__("json").loads(run.stdout)
    )


# -- scenarios ------------------------------------------------------------------------

# The answer's "who" without the scenario's tag, and whether its connection
# is the parent's first one.
PRELUDE = """
def seen(answer, first):
    return {{"got": answer["who"][len(TAG) + 1:],
             "connection": "parent's" if answer["connection"] == first["connection"] else "own"}}


def attempt(func, *args):
    try:
        return func(*args)
    except Exception as exc:
        return {{"error": error_name(exc)}}
"""

SEQUENTIAL = (
    PRELUDE
    + """
client = new_client({library!r})
base = {scheme}
first = get(client, base + "/echo", "parent-1")
if {track!r}:
    from atfork.integrations import http
    assert http.track(client) is client and not http.is_enabled()

def child(send):
    return seen(get(client, base + "/echo", "child"), first)

code, child_result = join(*fork(child))
parent = attempt(lambda: seen(get(client, base + "/echo", "parent-2"), first))
report({{"child": child_result, "parent": parent}})
"""
)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("library", LIBRARIES)
def test_childs_request_goes_on_a_connection_of_its_own(
    servers: Servers, library: str, scheme: str
) -> None:
    """A child's request through an inherited client: without atfork it
    goes out on the parent's pooled connection (over TLS the parent's next
    request then fails); with it, on a connection of the child's own, and
    the parent's next request succeeds on its original connection."""
    require(library)
    body = SEQUENTIAL.format(library=library, scheme=scheme, track=False)
    without = scenario(body, servers, atfork=False)
    assert {"got": "child", "connection": "parent's"} == without["child"]
    if scheme == "HTTP":
        assert {"got": "parent-2", "connection": "parent's"} == without["parent"]
    else:
        assert tls_failure(library, without["parent"]), without["parent"]
    assert {
        "child": {"got": "child", "connection": "own"},
        "parent": {"got": "parent-2", "connection": "parent's"},
    } == scenario(body, servers, atfork=True)


CROSSED = (
    PRELUDE
    + """
client = new_client({library!r})
base = {scheme}
first = get(client, base + "/echo", "parent-1")

def child(send):
    # The server holds this answer until a request arrives behind it.
    return seen(get(client, base + "/hold", "child"), first)

pid, read = fork(child)
control("wait", "child")  # the child's request has reached the server
os.kill(pid, signal.SIGSTOP)  # only the parent reads from now on
parent = attempt(lambda: seen(get(client, base + "/echo", "parent-2"), first))
control("release", "child")
# Without atfork the parent took the child's answer: nothing left to wait for.
os.kill(pid, signal.SIGCONT if ATFORK else signal.SIGKILL)
code, child_result = join(pid, read)
report({{"child": child_result, "parent": parent}})
"""
)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("library", LIBRARIES)
def test_parent_never_gets_the_childs_response(servers: Servers, library: str, scheme: str) -> None:
    """Parent and child both with a request in flight: without atfork they
    share the parent's connection and the parent reads the child's response
    (plain HTTP and TLS alike); with it, each gets its own, the parent on
    its original connection."""
    require(library)
    body = CROSSED.format(library=library, scheme=scheme)
    assert {
        "child": None,
        "parent": {"got": "child", "connection": "parent's"},
    } == scenario(body, servers, atfork=False)
    assert {
        "child": {"got": "child", "connection": "own"},
        "parent": {"got": "parent-2", "connection": "parent's"},
    } == scenario(body, servers, atfork=True)


AFTER = (
    PRELUDE
    + """
import gc
client = new_client({library!r})
first = get(client, HTTPS + "/echo", "parent-1")

def child(send):
    global client
    send(seen(get(client, HTTPS + "/echo", "child"), first))
    if {action!r} == "close":
        client.close()
    elif {action!r} == "collect":
        del client
        gc.collect()
    raise SystemExit(0)  # the interpreter's own exit: finalisers, atexit

code, child_result = join(*fork(child))
parent = attempt(lambda: seen(get(client, HTTPS + "/echo", "parent-2"), first))
report({{"child": child_result, "code": code, "parent": parent}})
"""
)

# fork() in the prelude runs child() and then os._exit(): a child that
# raises SystemExit gets there through the interpreter's normal exit
# instead, since the prelude's except clause takes only Exception.


@pytest.mark.parametrize("action", ["close", "collect", "exit"])
@pytest.mark.parametrize("library", LIBRARIES)
def test_parent_connection_survives_the_child_closing_or_exiting(
    servers: Servers, library: str, action: str
) -> None:
    """A child that used an inherited TLS client and then closes it, lets
    it be garbage-collected, or exits through the interpreter's shutdown:
    without atfork the parent's next request fails; with it, it succeeds on
    the parent's original connection."""
    require(library)
    body = AFTER.format(library=library, action=action)
    without = scenario(body, servers, atfork=False)
    assert {"got": "child", "connection": "parent's"} == without["child"]
    assert tls_failure(library, without["parent"]), without["parent"]
    assert {
        "child": {"got": "child", "connection": "own"},
        "code": 0,
        "parent": {"got": "parent-2", "connection": "parent's"},
    } == scenario(body, servers, atfork=True)


SHUTDOWN = (
    PRELUDE
    + """
import socket
client = new_client({library!r})
first = get(client, HTTP + "/echo", "parent-1")

def pooled_sockets():
    if {library!r} == "requests":
        pools = client.adapters["http://"].poolmanager.pools
        return [c.sock for p in pools._container.values() for c in p.pool.queue if c]
    connections = client._transport._pool._connections
    return [c._connection._network_stream.get_extra_info("socket") for c in connections]

def child(send):
    # What a well-meant "close the inherited connections" would do.
    done = []
    for sock in pooled_sockets():
        try:
            sock.shutdown(socket.SHUT_RDWR)
            done.append("shut down")
        except OSError as exc:
            done.append(error_name(exc))
    return done

code, child_result = join(*fork(child))
parent = attempt(lambda: seen(get(client, HTTP + "/echo", "parent-2"), first))
report({{"child": child_result, "parent": parent}})
"""
)


@pytest.mark.parametrize("library", LIBRARIES)
def test_child_cannot_shut_the_parents_connection_down(servers: Servers, library: str) -> None:
    """A child that shuts the inherited sockets down: without atfork the
    parent's connection is gone (its pool reconnects); with it, the
    shutdown fails on /dev/null and the parent keeps its connection."""
    require(library)
    body = SHUTDOWN.format(library=library)
    assert {
        "child": ["shut down"],
        "parent": {"got": "parent-2", "connection": "own"},
    } == scenario(body, servers, atfork=False)
    assert {
        "child": ["OSError"],
        "parent": {"got": "parent-2", "connection": "parent's"},
    } == scenario(body, servers, atfork=True)


ASYNC = """
import asyncio, ssl, threading, httpx

async def aget(client, name):
    answer = await client.get("{}/echo?who={}".format(HTTPS, who(name)), timeout=10)
    return answer.json()  # whose request it answers, and on which connection

def in_a_new_loop(coroutine):
    # The inherited loop cannot run in the child: a loop of its own, in a thread.
    result = []
    def run():
        try:
            result.append(asyncio.run(coroutine))
        except Exception as exc:
            result.append(error_name(exc))
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]

async def main():
    client = httpx.AsyncClient(verify=ssl.create_default_context(cafile=CA), trust_env=False)
    first = (await aget(client, "parent-1"))["connection"]

    async def use_and_close():
        connection = (await aget(client, "child"))["connection"]
        await client.aclose()
        return "own" if connection != first else "parent's"

    def child(send):
        return in_a_new_loop(use_and_close())

    code, child_result = join(*fork(child))
    try:
        answer = await aget(client, "parent-2")
        if answer["who"] != who("parent-2"):
            parent = "the child's answer"
        else:
            parent = "parent's" if answer["connection"] == first else "own"
    except Exception as exc:
        parent = error_name(exc)
    await client.aclose()
    served = [e["who"][len(TAG) + 1:] for e in control("log", "") if e["connection"] == first]
    return {"child": child_result, "parent": parent, "on the parent's connection": served}

report(asyncio.run(main()))
"""


def test_async_client_child_gets_its_own_connection(servers: Servers) -> None:
    """An httpx.AsyncClient forked from within the parent's event loop and
    used and closed by the child from an event loop of its own: without
    atfork the child's request goes out on the parent's TLS connection (and
    the child fails before it reads the answer), and the parent either finds
    that answer waiting and reconnects or, when it has not come yet, sends
    on the connection and reads it; with atfork, the child's request and
    close go to a connection of its own, and the parent keeps its
    connection."""
    require("httpx")
    without = scenario(ASYNC, servers, atfork=False)
    assert ["parent-1", "child"] == without["on the parent's connection"]
    assert without["parent"] in ("own", "the child's answer")
    assert {
        "child": "own",
        "parent": "parent's",
        "on the parent's connection": ["parent-1", "parent-2"],
    } == scenario(ASYNC, servers, atfork=True)


BOTOCORE = """
import botocore.config, botocore.session
client = botocore.session.get_session().create_client(
    "s3", region_name="us-east-1", endpoint_url=HTTPS, verify=CA,
    aws_access_key_id="test", aws_secret_access_key="test",
    config=botocore.config.Config(retries={"total_max_attempts": 1}))

def head(name):
    headers = client.head_bucket(Bucket=who(name))["ResponseMetadata"]["HTTPHeaders"]
    return int(headers["x-connection"])

first = head("parent-1")

def child(send):
    return "parent's" if head("child") == first else "own"

code, child_result = join(*fork(child))
try:
    parent = "parent's" if head("parent-2") == first else "own"
except Exception as exc:
    parent = error_name(exc)
report({"child": child_result, "parent": parent})
"""


def test_botocore_client_child_gets_its_own_connection(servers: Servers) -> None:
    """A botocore S3 client (boto3's clients are these) pools through
    urllib3: without atfork the child's HeadBucket goes out on the parent's
    TLS connection and the parent's next call fails; with it, the child uses
    a connection of its own and the parent keeps its own."""
    require("botocore")
    without = scenario(BOTOCORE, servers, atfork=False)
    assert "parent's" == without["child"]
    assert tls_failure("botocore", {"error": without["parent"]}), without["parent"]
    assert {"child": "own", "parent": "parent's"} == scenario(BOTOCORE, servers, atfork=True)


@pytest.mark.parametrize("library", LIBRARIES)
def test_track_covers_a_client_made_before_anything_was_enabled(
    servers: Servers, library: str
) -> None:
    """track() alone, on a client that already holds a TLS connection,
    gives the child its own connection and keeps the parent's."""
    require(library)
    assert {
        "child": {"got": "child", "connection": "own"},
        "parent": {"got": "parent-2", "connection": "parent's"},
    } == scenario(
        SEQUENTIAL.format(library=library, scheme="HTTPS", track=True), servers, atfork=False
    )


GRANDCHILD = (
    PRELUDE
    + """
client = new_client({library!r})
first = get(client, HTTPS + "/echo", "parent-1")

def grandchild(send):
    return get(client, HTTPS + "/echo", "grandchild")["connection"]

def child(send):
    mine = get(client, HTTPS + "/echo", "child")["connection"]
    code, theirs = join(*fork(grandchild))
    again = get(client, HTTPS + "/echo", "child-2")["connection"]
    return {{"own": mine != first["connection"],
             "grandchild's own": theirs not in (mine, first["connection"]),
             "kept": again == mine}}

code, child_result = join(*fork(child))
parent = attempt(lambda: seen(get(client, HTTPS + "/echo", "parent-2"), first))
report({{"child": child_result, "parent": parent}})
"""
)


@pytest.mark.parametrize("library", LIBRARIES)
def test_grandchild_gets_its_own_connection_too(servers: Servers, library: str) -> None:
    """A child's own connection is quarantined in its children in turn; the
    child keeps it, and the parent keeps its own."""
    require(library)
    assert {
        "child": {"own": True, "grandchild's own": True, "kept": True},
        "parent": {"got": "parent-2", "connection": "parent's"},
    } == scenario(GRANDCHILD.format(library=library), servers, atfork=True)


STRESS = """
CHILDREN, CHILD_REQUESTS, PARENT_REQUESTS = 12, 4, 24
session, client = new_client("requests"), new_client("httpx")
first = {"requests": get(session, HTTPS + "/echo", "parent-s")["connection"],
         "httpx": get(client, HTTPS + "/echo", "parent-x")["connection"]}

def check(name, library, answer, errors, crossed, used):
    if answer["who"] != who(name):
        crossed.append(name)
    used.add(answer["connection"])

def run(prefix, count, errors, crossed, used):
    for i in range(count):
        for library, c in (("requests", session), ("httpx", client)):
            name = "{}-{}-{}".format(prefix, library, i)
            try:
                check(name, library, get(c, HTTPS + "/echo", name), errors, crossed, used)
            except Exception as exc:
                errors.append(error_name(exc))

def child_of(n):
    def child(send):
        errors, crossed, used = [], [], set()
        run("child{}".format(n), CHILD_REQUESTS, errors, crossed, used)
        return {"errors": errors, "crossed": crossed,
                "on the parent's": sorted(used & set(first.values()))}
    return child

errors, crossed, used = [], [], set()
children = []
for n in range(CHILDREN):
    children.append(fork(child_of(n)))
    run("parent{}".format(n), 1, errors, crossed, used)  # between the forks
run("parent-end", PARENT_REQUESTS, errors, crossed, used)  # while they run
results = [join(pid, read) for pid, read in children]
report({
    "parent errors": errors, "parent crossed": crossed,
    "parent reconnected": sorted(used - set(first.values())),
    "child codes": sorted({code for code, _ in results}),
    "child errors": [e for _, r in results for e in r["errors"]],
    "child crossed": [c for _, r in results for c in r["crossed"]],
    "children on the parent's": [p for _, r in results for p in r["on the parent's"]],
})
"""


def test_stress_many_children_and_a_busy_parent(servers: Servers) -> None:
    """12 children request through an inherited requests.Session and
    httpx.Client over TLS while the parent keeps requesting: no error and no
    crossed response in any process, no child on the parent's connections,
    and the parent never reconnects."""
    require("requests", "httpx")
    assert {
        "parent errors": [],
        "parent crossed": [],
        "parent reconnected": [],
        "child codes": [0],
        "child errors": [],
        "child crossed": [],
        "children on the parent's": [],
    } == scenario(STRESS, servers, atfork=True, timeout=120)


def _urllib3_major() -> Any:
    run = run_python("import urllib3; print(urllib3.__version__)", timeout=60)
    assert 0 == run.returncode, run.stderr
    return int(run.stdout.split(".")[0])


def test_urllib3_major_version_of_this_python() -> None:
    """The matrix tests both urllib3 lines: botocore holds 3.9 to urllib3
    1.26, and the other Pythons get 2.x."""
    require("urllib3", "botocore")
    assert (1 if sys.version_info < (3, 10) else 2) == _urllib3_major()
