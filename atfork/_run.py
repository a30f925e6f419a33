"""Run a Python program with atfork's integrations enabled, as ``python``
would run it: ``python -m atfork run [--enable NAMES] (-m MODULE | SCRIPT)
[ARGS...]``.

The integrations are enabled before the program's first line, and
``ATFORK_INTEGRATIONS`` is set to them, so that Python interpreters the
program starts (multiprocessing's ``spawn`` and ``forkserver`` children,
say) enable them too.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys

from atfork import integrations
from atfork.integrations import VARIABLE, split_names

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run a program with integrations enabled (like python [-m MODULE | SCRIPT])"

# What runs when neither --enable nor ATFORK_INTEGRATIONS names anything:
# every built-in integration that works in any process.
DEFAULT = tuple(name for name in integrations.BUILTIN if name != "uwsgi")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [--enable NAMES] (-m MODULE | SCRIPT) [ARGS...]"
    parser.add_argument(
        "--enable",
        metavar="NAMES",
        help=(
            "integrations to enable, separated by commas (default: $ATFORK_INTEGRATIONS, "
            f"else {','.join(DEFAULT)})"
        ),
    )
    parser.add_argument(
        "-m",
        dest="module",
        nargs=argparse.REMAINDER,
        metavar="MODULE",
        help="run a library module as a script; what follows is its arguments",
    )
    parser.add_argument(
        "script", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS]", help="a Python file to run"
    )


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    chosen = split_names(args.enable if args.enable is not None else os.environ.get(VARIABLE, ""))
    chosen = chosen or list(DEFAULT)
    try:
        found = [integrations.get(name) for name in chosen]
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    if args.module is not None:
        if not args.module:
            parser.error("-m needs a MODULE")
        program, *program_args = args.module
        if importlib.util.find_spec(program) is None:
            parser.error(f"no module named {program!r}")
    elif args.script:
        program, *program_args = args.script
        if not os.path.isfile(program):
            parser.error(f"no such file: {program!r}")
    else:
        parser.error("a SCRIPT or -m MODULE is required")
    for integration in found:
        integration.enable()
    os.environ[VARIABLE] = ",".join(chosen)
    sys.argv = [program, *program_args]
    if args.module is not None:
        runpy.run_module(program, run_name="__main__", alter_sys=True)
    else:
        sys.path[0] = os.path.dirname(os.path.abspath(program))
        runpy.run_path(program, run_name="__main__")
    return 0
