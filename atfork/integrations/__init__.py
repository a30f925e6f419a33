"""Integrations that make libraries fork-safe, built on :func:`atfork.atfork`.

Each built-in integration is a module ``atfork.integrations.NAME`` with
``enable(**options)``, ``disable()`` and ``is_enabled()``. Third-party
integrations plug in through the entry-point group ``atfork.integrations``:
an entry point names a module or an object with the same three callables.

.. versionadded:: 0.1
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from typing import Any, Protocol, cast

__all__ = [
    "BUILTIN",
    "PRIORITY_DB",
    "PRIORITY_LOGGING",
    "PRIORITY_RANDOM",
    "PRIORITY_STDIO",
    "PRIORITY_THREADING",
    "Integration",
    "available",
    "enable",
    "get",
]

#: The built-in integrations, by name: each is the module
#: ``atfork.integrations.NAME``.
BUILTIN: tuple[str, ...] = ("db", "logging", "random", "stdio", "threading", "uwsgi")

ENTRY_POINT_GROUP = "atfork.integrations"

#: The environment variable that names the integrations to enable at start-up.
VARIABLE = "ATFORK_INTEGRATIONS"

# The priorities the built-in integrations register with. User hooks default
# to 0: a higher priority runs earlier in the child and later in prepare, so
# the integrations repair the child (locks, then streams, then logging)
# before any user child callback runs, and take their prepare-time state
# after every user prepare callback ran; user callbacks may log, print and
# use locks in both.
PRIORITY_THREADING = 1400
PRIORITY_STDIO = 1300
PRIORITY_LOGGING = 1200
PRIORITY_RANDOM = 1100
PRIORITY_DB = 1000


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


def get(name: str) -> Integration:
    """The integration called ``name``, imported (a built-in name wins over
    an entry point of the same name).

    :raises ValueError: no integration has that name.
    :raises TypeError: the entry point names something that is not an
        integration.

    .. versionadded:: 0.1
    """
    if name in BUILTIN:
        return cast(Integration, importlib.import_module(f"{__name__}.{name}"))
    entry_point = _entry_points().get(name)
    if entry_point is None:
        raise ValueError(
            f"no atfork integration named {name!r}; available: {', '.join(available())}"
        )
    integration = entry_point.load()
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
    by commas or spaces)."""
    return value.replace(",", " ").split()


def enable(*names: str, **options: Any) -> None:
    """Enable the integrations called ``names``; ``options`` go to each.

    Every name is checked before any integration is enabled.

    :raises ValueError: a name is unknown (the message lists the available
        ones).

    .. versionadded:: 0.1
    """
    integrations = [get(name) for name in names]
    for integration in integrations:
        integration.enable(**options)
