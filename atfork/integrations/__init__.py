"""Integrations that make libraries fork-safe, built on :func:`atfork.atfork`.

Each built-in integration is a module ``atfork.integrations.NAME`` with
``enable(**options)``, ``disable()`` and ``is_enabled()``; :func:`enable`
enables several by name, all or none, each with the options it takes.
Third-party integrations plug in through the entry-point group
``atfork.integrations``: an entry point names a module or an object with the
same three callables.

.. versionadded:: 0.1
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from importlib import metadata
from typing import Any, Protocol, cast

__all__ = [
    "BUILTIN",
    "PRIORITY_BUFFERS",
    "PRIORITY_DB",
    "PRIORITY_DJANGO",
    "PRIORITY_HTTP",
    "PRIORITY_LOGGING",
    "PRIORITY_PROMETHEUS",
    "PRIORITY_RANDOM",
    "PRIORITY_THREADING",
    "Integration",
    "available",
    "enable",
    "get",
]

#: The built-in integrations, by name: each is the module
#: ``atfork.integrations.NAME``.
BUILTIN: tuple[str, ...] = (
    "db",
    "django",
    "http",
    "logging",
    "prometheus",
    "random",
    "sentry",
    "stdio",
    "threading",
    "uwsgi",
)

ENTRY_POINT_GROUP = "atfork.integrations"

#: The environment variable that names the integrations to enable at start-up.
VARIABLE = "ATFORK_INTEGRATIONS"

# The priorities the built-in integrations register with. User hooks default
# to 0: a higher priority runs earlier in the child and later in prepare, so
# the integrations repair the child (buffered files, then locks, then
# logging) before any user child callback runs, and take their
# prepare-time state after every user prepare callback ran; user callbacks
# may log, print and use locks in both. Buffered files come first: any later
# child callback may print or log, and the failure of one is reported on
# sys.stderr. Django's wrappers are repaired after the db integration
# quarantined the driver connections under them (either order works: each
# quarantine is idempotent). prometheus_client's shared lock is repaired
# with the other locks, before any user child callback counts something.

#: The buffered-file repair of the ``stdio`` and ``logging`` integrations
#: (all the ``stdio`` integration does).
PRIORITY_BUFFERS = 1500
#: The ``threading`` integration.
PRIORITY_THREADING = 1400
#: The ``prometheus`` integration.
PRIORITY_PROMETHEUS = 1350
#: The ``logging`` integration.
PRIORITY_LOGGING = 1200
#: The ``random`` integration.
PRIORITY_RANDOM = 1100
#: The ``db`` integration.
PRIORITY_DB = 1000
#: The ``django`` integration.
PRIORITY_DJANGO = 950
#: The ``http`` integration.
PRIORITY_HTTP = 900


class Integration(Protocol):
    """What an integration provides (a module satisfies it).

    .. versionadded:: 0.1
    """

    def enable(self, **options: Any) -> None: ...

    def disable(self) -> None: ...

    def is_enabled(self) -> bool: ...


def _entry_points() -> dict[str, metadata.EntryPoint]:
    if sys.version_info >= (3, 10):
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    else:  # pragma: no cover  (3.9 returns a dict of groups)
        found = metadata.entry_points().get(ENTRY_POINT_GROUP, ())
    return {ep.name: ep for ep in found if ep.name not in BUILTIN}


def available() -> list[str]:
    """The names :func:`enable` accepts: built-in ones and entry points.

    .. versionadded:: 0.1
    """
    return sorted({*BUILTIN, *_entry_points()})


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        hint = " (pass names one by one: enable(*names))" if isinstance(name, Iterable) else ""
        raise TypeError(f"an atfork integration name is a str, not {type(name).__name__}{hint}")


def get(name: str) -> Integration:
    """The integration called ``name``, imported (a built-in name wins over
    an entry point of the same name).

    :raises TypeError: ``name`` is not a string, or the entry point names
        something that is not an integration.
    :raises ValueError: no integration has that name.
    :raises ImportError: the entry point's module raised as it was imported
        (the message names the integration and what it raised).

    .. versionadded:: 0.1
    """
    _check_name(name)
    if name in BUILTIN:
        return cast(Integration, importlib.import_module(f"{__name__}.{name}"))
    entry_point = _entry_points().get(name)
    if entry_point is None:
        raise ValueError(
            f"no atfork integration named {name!r}; available: {', '.join(available())}"
        )
    try:
        integration = entry_point.load()
    except Exception as error:
        raise ImportError(
            f"atfork integration {name!r} (entry point {entry_point.value!r}) could not be "
            f"imported: {type(error).__name__}: {error}"
        ) from error
    missing = [
        f
        for f in ("enable", "disable", "is_enabled")
        if not callable(getattr(integration, f, None))
    ]
    if missing:
        raise TypeError(
            f"entry point {entry_point.value!r} ({name!r} in group {ENTRY_POINT_GROUP!r}) "
            f"is not an atfork integration: it lacks {', '.join(missing)}"
        )
    return cast(Integration, integration)


def split_names(value: str) -> list[str]:
    """The integration names in a value of ``ATFORK_INTEGRATIONS`` (separated
    by commas or spaces; empty items are nothing)."""
    return value.replace(",", " ").split()


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line, for a report that must be one."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def enable(*names: str, **options: Any) -> None:
    """Enable the integrations called ``names``: all of them, or none.

    Every name is checked, and every option given to an integration that
    takes it, before any integration is enabled. Each option goes to every
    named integration whose ``enable()`` takes it (a parameter of that name,
    or ``**options``), and to no other. When an integration fails to enable,
    those this call enabled before it are disabled again (one enabled before
    the call stays enabled, with the options this call gave it), and the
    error, of the type the integration raised, names it. A name given twice
    enables its integration once.

    :raises TypeError: a name is not a string, or no named integration
        takes an option.
    :raises ValueError: a name is unknown (the message lists the available
        ones).
    :raises ImportError: a third-party integration could not be imported.

    .. versionadded:: 0.1
    """
    chosen = {name: get(name) for name in names}
    routed = _route(chosen, options)
    was_enabled = {name: integration.is_enabled() for name, integration in chosen.items()}
    done: list[str] = []
    for name, integration in chosen.items():
        try:
            integration.enable(**routed[name])
        except BaseException as error:
            # The failed one too: it may have got half-way.
            undo = [n for n in (name, *reversed(done)) if not was_enabled[n]]
            suffix = "".join(
                f" (and disabling {n!r} again raised {type(e).__name__}: {e})"
                for n, e in _disable(chosen, undo)
            )
            named = _named(error, name, suffix) if isinstance(error, Exception) else None
            if named is None:
                raise
            raise named from error
        done.append(name)


def _options_taken(integration: Integration) -> frozenset[str] | None:
    """The keyword options the ``enable()`` of ``integration`` takes; None
    when it takes any (``**options``, or a signature that cannot be read)."""
    import inspect  # only when options are given (see _route)

    try:
        parameters = inspect.signature(integration.enable).parameters.values()
    except (TypeError, ValueError):  # no signature to read: it gets every option
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in parameters if p.kind in keywords)


def _route(chosen: dict[str, Integration], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The options each integration of ``chosen`` gets: those it takes.

    :raises TypeError: none of them takes one of ``options``.
    """
    if not options:  # every call without options, ATFORK_INTEGRATIONS's among them
        return {name: {} for name in chosen}
    taken = {name: _options_taken(integration) for name, integration in chosen.items()}
    routed = {
        name: {k: v for k, v in options.items() if keys is None or k in keys}
        for name, keys in taken.items()
    }
    unclaimed = [k for k in options if not any(k in given for given in routed.values())]
    if unclaimed:
        takes = "; ".join(
            f"{name!r} takes {', '.join(map(repr, sorted(keys))) or 'none'}"
            for name, keys in taken.items()
            if keys is not None
        )
        among = f"among {', '.join(map(repr, chosen))} takes" if chosen else "was named to take"
        raise TypeError(
            f"no integration {among} {', '.join(map(repr, unclaimed))}"
            + (f" ({takes})" if takes else "")
        )
    return routed


def _disable(chosen: dict[str, Integration], names: list[str]) -> list[tuple[str, Exception]]:
    """Disable the integrations called ``names``; what each that failed raised."""
    failed = []
    for name in names:
        try:
            chosen[name].disable()
        except Exception as error:  # noqa: BLE001  (reported with the error that caused the undo)
            failed.append((name, error))
    return failed


def _named(error: Exception, name: str, suffix: str) -> Exception | None:
    """A copy of ``error`` whose message names the integration that raised
    it; None where the type cannot be made from a message alone (``error``
    then gets the message as a note, on 3.11+)."""
    message = f"atfork integration {name!r} could not be enabled: {error}{suffix}"
    try:
        named: Exception | None = type(error)(message)
    except Exception:  # noqa: BLE001  (a constructor that wants more than a message)
        named = None
    if named is None or type(named) is not type(error) or str(named) != message:
        if hasattr(error, "add_note"):  # 3.11+
            error.add_note(message)
        return None
    return named
