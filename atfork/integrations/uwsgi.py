"""uWSGI workers get their atfork ``child`` callbacks, whatever uWSGI's options.

What breaks without it
    uWSGI forks its workers from C. Python's fork hooks, the standard
    library's and atfork's, run in a worker only as far as uWSGI calls
    CPython's fork API: with ``--py-call-uwsgi-fork-hooks`` it calls
    ``PyOS_BeforeFork()`` and ``PyOS_AfterFork_Child()`` and everything runs;
    with ``--py-call-osafterfork`` it calls only ``PyOS_AfterFork_Child()``,
    so atfork's ``child`` callbacks, which belong to a prepare phase, do not
    run (and CPython 3.13 aborts); with neither, nothing runs, and every
    worker keeps the master's locks, random streams and connections as they
    were at the fork.

What uWSGI and the standard library do
    Nothing more: uWSGI reseeds the global ``random`` instance in each
    worker, and calls its ``post_fork_hook`` (``uwsgidecorators.postfork``).

What this module does
    :func:`enable`, called in the uWSGI master before the workers are forked
    (from the application module, or a module given to ``--import``), puts
    :func:`atfork.check` first in uWSGI's post-fork chain: each worker runs
    the atfork ``child`` callbacks once, unless ``PyOS_AfterFork_Child()``
    already ran them. ``prepare`` and ``parent`` callbacks can only run with
    ``--py-call-uwsgi-fork-hooks``; without it, :func:`enable` warns
    (:class:`UwsgiForkHooksWarning`), since the standard library's own child
    reinitialisation (``threading``, ``logging``) does not run in the
    workers either.

.. versionadded:: 0.1
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import atfork

__all__ = ["UwsgiForkHooksWarning", "disable", "enable", "is_enabled"]

FORK_HOOKS_OPTION = "py-call-uwsgi-fork-hooks"


class UwsgiForkHooksWarning(atfork.AtforkWarning):
    """uWSGI runs without ``--py-call-uwsgi-fork-hooks``: the ``prepare`` and
    ``parent`` callbacks cannot run, nor the standard library's own child
    reinitialisation.

    .. versionadded:: 0.1
    """

    __module__ = "atfork.integrations.uwsgi"


def _decorators() -> ModuleType:
    try:
        uwsgi = importlib.import_module("uwsgi")
        decorators = importlib.import_module("uwsgidecorators")
    except ImportError:
        raise RuntimeError(
            "the uwsgi integration works in a uWSGI process only (the 'uwsgi' module "
            "that uWSGI provides could not be imported); enable it from the application "
            "module, or a module given to uWSGI's --import"
        ) from None
    if not uwsgi.opt.get(FORK_HOOKS_OPTION):
        warnings.warn(
            f"uWSGI runs without --{FORK_HOOKS_OPTION}: atfork prepare and parent callbacks "
            "cannot run, nor the standard library's own reinitialisation in the workers; "
            "atfork runs the child callbacks from uWSGI's post-fork hook",
            UwsgiForkHooksWarning,
            stacklevel=3,
        )
    return decorators


def enable() -> None:
    """Run the atfork ``child`` callbacks in every uWSGI worker.

    Call it in the uWSGI master, before the workers are forked.

    :raises RuntimeError: outside a uWSGI process.

    .. versionadded:: 0.1
    """
    decorators = _decorators()
    if atfork.check not in decorators.postfork_chain:
        decorators.postfork_chain.insert(0, atfork.check)


def _postfork_chain() -> list[object]:
    """uWSGI's post-fork chain; empty outside uWSGI."""
    try:
        return importlib.import_module("uwsgidecorators").postfork_chain  # type: ignore[no-any-return]
    except ImportError:
        return []


def disable() -> None:
    """Take :func:`atfork.check` out of uWSGI's post-fork chain again.

    .. versionadded:: 0.1
    """
    chain = _postfork_chain()
    while atfork.check in chain:
        chain.remove(atfork.check)


def is_enabled() -> bool:
    """Whether :func:`atfork.check` is in uWSGI's post-fork chain.

    .. versionadded:: 0.1
    """
    return atfork.check in _postfork_chain()
