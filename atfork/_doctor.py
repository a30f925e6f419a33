"""Import a program, show what it would do at a fork, and try two forks:
``python -m atfork doctor [--json] [-m MODULE | SCRIPT]``.

It lists the registered atfork hooks in fork order (name, priority, where
each was registered), the integrations and whether they are enabled, and
the threads alive; then it forks two trial children that each log, print,
import a module and draw random numbers under a deadline. A child that hangs
is killed and its stack reported; two children drawing the same numbers are
reported too. A SCRIPT runs as a module named ``__atfork_doctor__``, so its
``if __name__ == "__main__"`` block does not run. Exit code 0 when the
trial went well, 1 when it found problems, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import random
import runpy
import sys
import threading
from typing import Any

import atfork
from atfork import integrations
from atfork._registry import _PHASES
from atfork._timeout import check_timeout, seconds
from atfork.testing import ChildTimeoutError, run_in_child

__all__ = ["HELP", "add_arguments", "diagnose", "render", "run"]

HELP = "import a program, list its fork hooks and threads, and try two forks"

# A standard library module unlikely to be imported already: the trial child
# imports it, which needs the import machinery's locks.
_TRIAL_IMPORTS = ("colorsys", "netrc", "shlex", "fractions")


def _phases(hook: atfork.Hook) -> list[str]:
    return [name for name, call in zip(_PHASES, hook._calls) if call is not None]


def _trial(quiet: bool) -> dict[str, Any]:
    """Runs in a trial child: each step that could hang after a fork. When
    ``quiet``, stdout only gets flushed (it may carry JSON); the line the
    child prints goes to stderr."""
    logging.getLogger("atfork.doctor").warning("trial child %d can log", os.getpid())
    sys.stdout.flush()
    print(
        f"atfork doctor: trial child {os.getpid()} can print",
        flush=True,
        file=sys.stderr if quiet else sys.stdout,
    )
    imported = next((m for m in _TRIAL_IMPORTS if m not in sys.modules), None)
    if imported is not None:
        __import__(imported)
    # Not for secrets: two children drawing the same numbers is the finding.
    draws: dict[str, list[float]] = {"random": [random.random() for _ in range(3)]}  # noqa: S311
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        draws["numpy.random"] = [float(x) for x in numpy.random.random(3)]
    return {"imported": imported, "draws": draws}


def diagnose(timeout: float = 10.0, *, quiet: bool = False) -> dict[str, Any]:
    """Describe this process's fork handling, and try two forks.

    :param timeout: the deadline of each trial child, in seconds (at most
        :data:`atfork.testing.MAX_TIMEOUT`).
    :param quiet: keep the trial children's output off stdout.
    :returns: a report as plain data (see :func:`render`).
    :raises ValueError: ``timeout`` is not a valid deadline (before any fork:
        a bad deadline is not a finding about the program).
    """
    check_timeout(timeout)
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "hooks": [
            {"name": h.name, "priority": h.priority, "where": h.where, "phases": _phases(h)}
            for h in atfork.hooks()
        ],
        "integrations": {},
        "threads": [
            {"name": t.name, "daemon": t.daemon, "main": t is threading.main_thread()}
            for t in threading.enumerate()
        ],
        "trial": {"ok": True, "problems": [], "stack": ""},
    }
    for name in integrations.available():
        try:
            report["integrations"][name] = integrations.get(name).is_enabled()
        except Exception as error:  # noqa: BLE001  (a broken plug-in is a finding)
            report["integrations"][name] = f"error: {error}"
    trial = report["trial"]
    results = []
    for _ in range(2):
        try:
            results.append(run_in_child(_trial, quiet, timeout=timeout))
        except ChildTimeoutError as error:
            trial["stack"] = error.stack
            trial["problems"].append(
                f"a trial child hung for {timeout:g} s (logging, printing, importing or "
                "drawing random numbers after a fork); its stack is below"
            )
            break
        except Exception as error:  # noqa: BLE001  (what failed in the child is the finding)
            trial["problems"].append(f"a trial child failed: {type(error).__name__}: {error}")
            break
    if len(results) == 2:
        for source, draws in results[0]["draws"].items():
            if draws == results[1]["draws"][source]:
                trial["problems"].append(
                    f"two children drew the same numbers from {source}: enable the random "
                    "integration"
                )
    trial["ok"] = not trial["problems"]
    return report


def _near(where: str) -> str:
    """``file:line``, the file relative to the current directory if inside it."""
    path, _, line = where.rpartition(":")
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return f"{path if relative.startswith('..') else relative}:{line}"


def render(report: dict[str, Any]) -> str:
    """The report of :func:`diagnose`, for a person."""
    lines = [f"atfork doctor: Python {report['python']}, process {report['pid']}", ""]
    hooks = report["hooks"]
    lines.append(f"Hooks ({len(hooks)}), in parent/child order (prepare runs in reverse):")
    for hook in hooks:
        lines.append(
            f"  {hook['priority']:>6}  {hook['name']}  [{', '.join(hook['phases'])}]  "
            f"{_near(hook['where'])}"
        )
    if not hooks:
        lines.append("  (none)")
    lines.append("")
    lines.append("Integrations:")
    for name, state in report["integrations"].items():
        shown = state if isinstance(state, str) else ("enabled" if state else "off")
        lines.append(f"  {name:<12} {shown}")
    lines.append("")
    threads = report["threads"]
    lines.append(f"Threads alive ({len(threads)}):")
    for thread in threads:
        tags = ", ".join(
            t for t, on in (("main", thread["main"]), ("daemon", thread["daemon"])) if on
        )
        lines.append(f"  {thread['name']}" + (f" ({tags})" if tags else ""))
    lines.append("")
    trial = report["trial"]
    if trial["ok"]:
        lines.append("Trial fork: two children logged, printed, imported and drew random numbers.")
    else:
        lines.append("Trial fork: PROBLEMS")
        lines.extend(f"  - {problem}" for problem in trial["problems"])
        if trial["stack"]:
            lines.append("")
            lines.extend("    " + line for line in trial["stack"].splitlines())
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [--json] [--timeout SECONDS] [-m MODULE | SCRIPT]"
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long a trial child may take before it counts as hung (10)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("-m", dest="module", metavar="MODULE", help="import this module first")
    target.add_argument("script", nargs="?", metavar="SCRIPT", help="run this file first")


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.module is not None:
        if importlib.util.find_spec(args.module) is None:
            parser.error(f"no module named {args.module!r}")
        importlib.import_module(args.module)
    elif args.script is not None:
        if not os.path.isfile(args.script):
            parser.error(f"no such file: {args.script!r}")
        script = os.path.abspath(args.script)
        sys.path[0] = os.path.dirname(script)
        runpy.run_path(script, run_name="__atfork_doctor__")
    report = diagnose(args.timeout, quiet=args.json)
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else render(report))
    return 0 if report["trial"]["ok"] else 1
