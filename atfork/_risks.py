"""Fork risks atfork cannot fix: :func:`fork_risks` finds them in the
calling process and says what to do about each.

Each check runs only when :func:`fork_risks` is called, never at fork time.
It looks a library up in :data:`sys.modules` and imports nothing: a library
the program did not import has made nothing to find. A check that fails,
because a library is of a version it does not know or in an odd state, is
skipped: :func:`fork_risks` does not raise.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from typing import Any, Callable, NamedTuple

__all__ = ["ForkRisk", "fork_risks"]

# How many objects of one kind are looked at, at most.
LIMIT = 50

# Imported by ``import atfork``: this module imports neither atfork's
# integrations nor doctor's inspection (the threading integration is looked
# at only if the program imported it).
_THREADING_INTEGRATION = "atfork.integrations.threading"


class ForkRisk(NamedTuple):
    """One thing that makes a fork of this process unsafe, which atfork
    cannot repair: what was found and what to do about it, for a person,
    each in one line. Returned by :func:`fork_risks`.

    :ivar kind: what kind of risk, a short identifier that stays the same
        across versions: ``"threads"``, ``"grpc"``, ``"native-threadpool"``,
        ``"cuda"``, ``"gevent"`` or ``"asyncio-loop"``.
    :ivar what: what was found, and what goes wrong in a child because of it.
    :ivar advice: what to do about it.

    .. versionadded:: 0.1
    """

    kind: str
    what: str
    advice: str


ForkRisk.__module__ = "atfork"


def fork_risks() -> list[ForkRisk]:
    """What makes a fork of this process unsafe right now, of what atfork
    cannot fix, each with its advice.

    Call it where the program is about to fork, a gunicorn ``pre_fork``
    server hook for one; ``python -m atfork doctor`` shows its risks in a
    section of their own (``"risks"`` in its ``--json`` report). It costs
    nothing at fork time: each check runs only when this is called. It
    imports nothing: a library is looked at only when it is in
    :data:`sys.modules`. A check that fails (a library of a version it does
    not know, or in an odd state) is skipped, so it never raises. The kinds,
    in the order they are checked:

    ``"threads"``
        Other threads alive (Python's threading knows them), with the
        objects given to :func:`atfork.integrations.threading.track` that
        are locked now.
    ``"grpc"``
        gRPC channels and servers (grpcio's ``grpc`` and ``grpc.aio``) alive,
        found among the collector's objects, and whether gRPC's fork support
        (``GRPC_ENABLE_FORK_SUPPORT``) is on.
    ``"native-threadpool"``
        Native thread pools (OpenBLAS, OpenMP, MKL, BLIS): with
        ``threadpoolctl`` imported, each pool it reports with more than one
        thread; without it (it is not imported for this), on Linux, the pool
        libraries loaded in the process (``/proc/self/maps``) when the
        process has threads Python does not know (``/proc/self/task``), which
        such a pool starts.
    ``"cuda"``
        torch with CUDA initialised (``torch.cuda.is_initialized()``).
    ``"gevent"``
        Modules gevent has monkey-patched.
    ``"asyncio-loop"``
        An asyncio event loop running in the calling thread.

    A fork made by the ``subprocess`` module with ``preexec_fn`` is not
    among them: it is made at that call, and no check made earlier can see
    it, while one made at fork time would cost something at every fork.
    Such a fork runs atfork's callbacks (a fork without ``preexec_fn``
    runs none: it does not run Python code in the child), and its child
    runs ``preexec_fn`` with one thread, where a lock another thread held
    stays held; ``process_group=``, ``start_new_session=``, ``user=``,
    ``group=``, ``extra_groups=`` and ``umask=`` do the usual jobs of a
    ``preexec_fn`` without it.

    :returns: the risks found, in the order above; empty if none.

    .. versionadded:: 0.1
    """
    risks: list[ForkRisk] = []
    for check in _CHECKS:
        try:
            risks += check()
        except Exception:  # noqa: BLE001, S112  (an odd library: its check is skipped)
            continue
    return risks


def _describe(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _imported_type(module: str, name: str) -> type | None:
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:10])
    return shown + (f" and {len(items) - 10} more" if len(items) > 10 else "")


# -- threads --------------------------------------------------------------------


def _locked_tracked() -> list[str]:
    """The objects given to the threading integration whose lock is taken
    now (by another thread; a plain Lock may be the caller's)."""
    integration = sys.modules.get(_THREADING_INTEGRATION)
    if integration is None:
        return []
    held = []
    for entry in integration._current():
        obj = entry.ref()
        if obj is None:
            continue
        lock = obj if entry.kind.lock_of is None else entry.kind.lock_of(obj)
        if lock.acquire(False):  # free, or an RLock the caller owns
            lock.release()
        else:
            held.append(_describe(obj))
        if len(held) >= LIMIT:
            break
    return held


def _threads() -> list[ForkRisk]:
    me = threading.current_thread()
    others = [t.name for t in threading.enumerate() if t is not me and t.is_alive()]
    if not others:
        return []
    held = _locked_tracked()
    holding = (
        f"; tracked objects locked now, which the child finds locked until the threading "
        f"integration re-creates their locks: {_names(held)}"
        if held
        else ""
    )
    integration = sys.modules.get(_THREADING_INTEGRATION)
    enabled = integration is not None and integration.is_enabled()
    return [
        ForkRisk(
            "threads",
            f"{len(others)} other thread(s) alive ({_names(others)}): a forked child has "
            "only the forking thread, so what the others were doing is never finished there, "
            f"and what they held stays held{holding}",
            "start threads after the fork (gunicorn's post_fork hook), or stop them before it"
            + (
                "; the threading integration repairs only the locks, queues and executors it tracks"
                if enabled
                else "; the threading integration repairs the locks, queues and executors "
                "they share"
            ),
        )
    ]


# -- gRPC -------------------------------------------------------------------------


def _grpc_fork_support(cygrpc: Any) -> bool:
    """Whether gRPC's fork support is on: grpcio reads the environment when
    it is imported."""
    enabled = getattr(cygrpc, "is_fork_support_enabled", None)
    if callable(enabled):
        return bool(enabled())
    value = os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "")
    return value.lower() in ("1", "true", "yes")


def _grpc_server_started(server: Any) -> bool:
    stage = getattr(getattr(vars(server).get("_state"), "stage", None), "name", None)
    return stage is None or stage != "STOPPED"


def _grpc() -> list[ForkRisk]:
    if "grpc" not in sys.modules:
        return []
    channel_kinds = (
        _imported_type("grpc._channel", "Channel"),
        _imported_type("grpc.aio._channel", "Channel"),
    )
    server_kinds = (
        _imported_type("grpc._server", "_Server"),
        _imported_type("grpc.aio._server", "Server"),
    )
    channel_types = tuple(k for k in channel_kinds if k is not None)
    server_types = tuple(k for k in server_kinds if k is not None)
    if not channel_types and not server_types:
        return []
    # One pass over the collector's objects (gRPC's are tracked by it), by
    # the type alone: isinstance() would ask a lazy proxy's __class__.
    channels: list[Any] = []
    servers: list[Any] = []
    for obj in gc.get_objects():
        cls = type(obj)
        if issubclass(cls, channel_types):
            channels.append(obj)
        elif issubclass(cls, server_types) and _grpc_server_started(obj):
            servers.append(obj)
    if not channels and not servers:
        return []
    supported = _grpc_fork_support(sys.modules.get("grpc._cython.cygrpc"))
    strategy = os.environ.get("GRPC_POLL_STRATEGY", "")
    found = " and ".join(
        part
        for part in (
            f"{len(channels)} channel(s)" if channels else "",
            f"{len(servers)} server(s)" if servers else "",
        )
        if part
    )
    after = "create gRPC channels and servers only after the fork, in each child"
    if supported:
        what = (
            f"gRPC: {found} alive, with gRPC's fork support on (GRPC_ENABLE_FORK_SUPPORT): "
            "it covers client channels only, and calls in flight at the fork fail in the child"
            + ("; a server is not covered" if servers else "")
        )
        advice = after + (
            f"; the fork support works only with GRPC_POLL_STRATEGY=poll or epoll1, not {strategy}"
            if strategy and strategy not in ("poll", "epoll1")
            else ""
        )
    else:
        what = (
            f"gRPC: {found} alive, without gRPC's fork support: gRPC's C core threads "
            "and polling state are not in a forked child, whose calls on them hang or fail"
        )
        advice = (
            f"{after}; or, for client channels, set GRPC_ENABLE_FORK_SUPPORT=true and "
            "GRPC_POLL_STRATEGY=poll in the environment before grpc is imported"
        )
    return [ForkRisk("grpc", what, advice)]


# -- native thread pools ----------------------------------------------------------

# Substrings of the file names of the thread pool libraries: OpenBLAS (numpy's
# and scipy's wheels bundle libscipy_openblas), GNU and Intel OpenMP, MKL, BLIS.
_POOL_LIBRARIES = ("openblas", "libgomp", "libiomp", "libomp", "libmkl", "libblis")

_POOL_ADVICE = (
    "limit the pools to one thread before the fork (threadpoolctl.threadpool_limits(1), or "
    "OMP_NUM_THREADS=1 and OPENBLAS_NUM_THREADS=1 in the environment before the library "
    "loads), or use multiprocessing's spawn or forkserver start method"
)


def _pool_libraries() -> list[str]:
    """The thread pool libraries loaded in this process (Linux), by file name."""
    found: dict[str, None] = {}
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            path = line.rstrip("\n").rpartition(" ")[2]
            name = path.rpartition("/")[2]
            if any(key in name for key in _POOL_LIBRARIES):
                found.setdefault(name)
    return list(found)


def _native_threadpools() -> list[ForkRisk]:
    threadpoolctl = sys.modules.get("threadpoolctl")
    if threadpoolctl is not None:
        pools = [
            f"{info.get('internal_api')} ({info.get('user_api')}, {info.get('num_threads')} "
            "threads)"
            for info in threadpoolctl.threadpool_info()
            if isinstance(info.get("num_threads"), int) and info["num_threads"] > 1
        ]
    else:
        # Not imported for this: a pool library loaded, and threads of the
        # process Python does not know, which such a pool starts.
        try:
            native = len(os.listdir("/proc/self/task")) - threading.active_count()
        except OSError:
            return []
        pools = _pool_libraries() if native > 0 else []
        if pools:
            pools = [f"{_names(pools)}, with {native} thread(s) Python does not know"]
    if not pools:
        return []
    return [
        ForkRisk(
            "native-threadpool",
            f"native thread pools whose threads may have started ({'; '.join(pools)}): a "
            "forked child has none of their threads, and a pool that does not start them "
            "again there (GNU OpenMP's) hangs or runs on one thread",
            _POOL_ADVICE,
        )
    ]


# -- CUDA, gevent, asyncio ------------------------------------------------------------


def _cuda() -> list[ForkRisk]:
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    if cuda is None or not cuda.is_initialized():
        return []
    return [
        ForkRisk(
            "cuda",
            "torch has initialised CUDA: a forked child cannot use it ('Cannot re-initialize "
            "CUDA in forked subprocess')",
            "use the spawn start method (torch.multiprocessing.set_start_method('spawn')), or "
            "initialise CUDA only after the fork, in each child",
        )
    ]


def _gevent() -> list[ForkRisk]:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return []
    saved = getattr(monkey, "saved", None)
    patched = sorted(saved) if isinstance(saved, dict) else []
    if not patched and not monkey.is_anything_patched():
        return []
    os_patched = monkey.is_module_patched("os")
    return [
        ForkRisk(
            "gevent",
            f"gevent has monkey-patched {_names(patched) or 'the standard library'}: the "
            "parent's greenlets go on running in a forked child, and gevent's hub, its event "
            "loop and its thread pool, must be reinitialised there"
            + ("" if os_patched else "; os is not patched, so os.fork() does not do it"),
            "fork with gevent's os.fork() (patched) or gevent.fork(), which call "
            "gevent.hub.reinit() in the child, or call gevent.reinit() first thing in a child "
            "forked otherwise; start greenlets that serve or poll after the fork",
        )
    ]


def _asyncio_loop() -> list[ForkRisk]:
    events = sys.modules.get("asyncio.events")
    if events is None:
        return []
    loop = events._get_running_loop()
    if loop is None:
        return []
    return [
        ForkRisk(
            "asyncio-loop",
            f"an asyncio loop is running in this thread ({_describe(loop)}): a child forked "
            "from it goes on running the parent's tasks and callbacks, on the parent's "
            "connections, and its selector shares the kernel's epoll set with the parent's",
            "fork before the loop starts, or from a thread without a running loop; in a "
            "child, leave the parent's loop (exec, or os._exit when done) instead of going "
            "on in it",
        )
    ]


_CHECKS: tuple[Callable[[], list[ForkRisk]], ...] = (
    _threads,
    _grpc,
    _native_threadpools,
    _cuda,
    _gevent,
    _asyncio_loop,
)
