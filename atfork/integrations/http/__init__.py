"""HTTP keep-alive connections across fork: a child never uses, reads or
closes the parent's pooled connections, and gets its own.

What breaks without it
    A forked child inherits every connection its parent's HTTP clients keep
    alive in their pools, and its next request to the same host takes one
    of them (requests #4323 and #1906, urllib3 #850). Measured here with
    ``requests.Session`` (urllib3 2.x and 1.26), ``httpx.Client`` and a
    botocore S3 client, on CPython 3.9, 3.11, 3.13 and 3.14t: over plain
    HTTP the child's request goes out on the parent's connection; over TLS
    it goes out with a copy of the parent's TLS state, and the parent's next
    request then fails (requests and botocore: ``SSLError`` ...
    ``DECRYPTION_FAILED_OR_BAD_RECORD_MAC``; httpx: ``ReadError``), the two
    processes having used the same record sequence numbers; with a request
    of each in flight, the parent reads the child's response, over HTTP and
    TLS alike. A child that shuts an inherited socket down ends the parent's
    connection. botocore (and so boto3) pools through urllib3 and shares its
    fate.

What the libraries and the standard library do
    Nothing about fork, on any version checked: urllib3 1.26 and 2.x,
    requests, botocore, httpcore 1.0 and httpx 0.28 have no pid check
    (urllib3's maintainers left it to programs, urllib3 #850), and
    ``os.fork`` copies the descriptors. What they do have is a check on a
    pooled connection before reuse: urllib3 closes a connection whose socket
    polls readable (``is_connection_dropped``), httpcore one whose
    keep-alive expired, or an idle HTTP/1.1 one whose socket polls readable.
    Closing an inherited client in the child sends nothing on CPython's
    ``ssl`` today (``SSLSocket.close()`` sends no ``close_notify``; every
    one of these libraries closes that way), but a ``shutdown()`` or
    ``unwrap()`` there would end the parent's session, as a TCP
    ``shutdown()`` of the shared socket would; so this module never does
    either, and makes sure nothing in the child can.

What this module does
    prepare, on the free-threaded build only: a copy of the registry of
    what it found, made again only when that changed, so that the child
    never reads the parent's dict (another thread registering a connection
    at the fork could leave the dict's lock held in the child; with the GIL
    it cannot). parent: nothing.

    child: every inherited connection it knows of is quarantined with the
    db integration's machinery (:mod:`atfork.integrations._quarantine`):
    the socket's descriptor is replaced by ``/dev/null`` with ``dup2``, a
    system call per connection and no lock, network or import. Whatever the
    child then does with the client (a request, ``close()``, garbage
    collection, exit) reads, writes, shuts down and closes ``/dev/null``,
    never the parent's connection, and the pool's own check above finds the
    connection dropped and opens one of the child's own: urllib3 at once
    (the poll answers readable), httpcore because the connection's
    keep-alive deadline is also put in the past. The parent is never
    touched, so its connections keep working without a reconnect.

    An ``httpx.AsyncClient`` (httpcore's ``AsyncConnectionPool``, AnyIO
    streams) has its sockets neutralised and its connections expired the
    same way: the child's ``aclose()``, garbage collection and exit are
    harmless, and a request the child makes from an event loop of its own
    goes out on a connection of its own. The loop the child inherited
    cannot run there (anyio finds no running loop), and, as in the parent,
    a connection belongs to the loop that opened it.

:func:`enable` finds connections by itself, without importing any client
library: it acts when the program imports one, wrapping the constructors
of urllib3's ``HTTPConnection`` (requests and botocore connections are
subclasses) and of httpcore's ``ConnectionPool`` and
``AsyncConnectionPool``, which register each new object in a weak
registry. :func:`track` covers one pool or client, whether or not
:func:`enable` was called.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

from atfork.integrations import PRIORITY_HTTP
from atfork.integrations import _quarantine as q
from atfork.integrations._imports import imported_type, when_imported
from atfork.integrations.http import _httpcore, _urllib3

__all__ = ["LIBRARIES", "disable", "enable", "is_enabled", "track"]

T = TypeVar("T")

#: The libraries :func:`enable` covers by itself, by import name (requests
#: and botocore pool through urllib3, httpx through httpcore).
LIBRARIES: tuple[str, ...] = ("httpcore", "urllib3")

_registry = q.Registry()
_patches = q.Patches("__atfork_http__")
# prepare (free-threaded build only): a copy of the registry, once per change.
# parent: nothing. child: the quarantine pass.
_pass = q.ChildPass(_registry, priority=PRIORITY_HTTP, name="atfork.integrations.http")
_ensure_hook = _pass.ensure
_enabled = False


# -- public API ---------------------------------------------------------------------


def _active() -> bool:
    return _enabled


def _register(quarantine: q.Quarantine, obj: object, *, auto: bool) -> None:
    # keep: each fork walks the object again (a urllib3 connection is reused
    # by its pool, with a socket of the child's that a grandchild inherits).
    _registry.register(obj, quarantine, auto=auto, keep=True)


def _on_import(found: tuple[tuple[str, str, q.Quarantine], ...]) -> Callable[[object], None]:
    """What enable() runs when a library is imported: the constructors of
    ``found`` register each object they build."""

    def wrap(module: object) -> None:
        for module_name, class_name, quarantine in found:
            cls = imported_type(module_name, class_name)
            if _enabled and cls is not None:
                track = functools.partial(_register, quarantine)
                _patches.patch(cls, "__init__", q.registering_init(_active, track))

    return wrap


def enable() -> None:
    """Quarantine inherited HTTP connections in every forked child, finding
    them automatically.

    Idempotent. A library imported later is covered from its import on;
    connections and pools made before :func:`enable` are covered if their
    pool or client is given to :func:`track`.

    .. versionadded:: 0.1
    """
    global _enabled
    _enabled = True
    _ensure_hook()
    when_imported("urllib3", _on_import(_urllib3.FOUND))
    when_imported("httpcore", _on_import(_httpcore.FOUND))


def disable() -> None:
    """Undo :func:`enable`: remove its wrappers and forget what it found.
    Objects given to :func:`track` stay covered. Idempotent.

    .. versionadded:: 0.1
    """
    global _enabled
    _enabled = False
    _patches.unpatch()
    _registry.forget_auto()
    if not _registry.tracked_count():
        _pass.remove()


def is_enabled() -> bool:
    """Whether :func:`enable` is in effect.

    .. versionadded:: 0.1
    """
    return _enabled


def track(obj: T) -> T:
    """Quarantine the connections of ``obj`` in every child forked from now
    on; return ``obj``.

    Takes a urllib3 ``PoolManager`` (``ProxyManager``), ``HTTPConnectionPool``
    (``HTTPSConnectionPool``) or ``HTTPConnection``, a requests ``Session``
    or ``HTTPAdapter``, a botocore client (a boto3 client is one) or its
    ``URLLib3Session``, an httpx ``Client``, ``AsyncClient``,
    ``HTTPTransport`` or ``AsyncHTTPTransport``, or an httpcore
    ``ConnectionPool`` or ``AsyncConnectionPool``. It is held weakly; each
    fork looks at the pools it has then.

    For urllib3, the connections idle in the pools at the fork are covered;
    one checked out at that moment (a streamed response not read to its
    end) only with :func:`enable`. For httpcore, every connection.

    :raises TypeError: ``obj`` is none of those.

    .. versionadded:: 0.1
    """
    for module, name, quarantine in (*_urllib3.KINDS, *_httpcore.KINDS):
        kind = imported_type(module, name)
        if kind is not None and isinstance(obj, kind):
            _register(quarantine, obj, auto=False)
            _ensure_hook()
            return obj
    raise TypeError(
        f"atfork.integrations.http.track() takes {_urllib3.TRACKABLE}, or "
        f"{_httpcore.TRACKABLE}, not {type(obj).__module__}.{type(obj).__qualname__}"
    )
