"""Run a Python program with atfork's integrations enabled, as ``python``
would run it: ``python -m atfork run [--enable NAMES]... (-m MODULE | [--]
SCRIPT) [ARGS...]``.

The integrations are enabled before the program's first line, and
``ATFORK_INTEGRATIONS`` is set to them, so that Python interpreters the
program starts (multiprocessing's ``spawn`` and ``forkserver`` children,
say) enable them too. They are enabled all or none: a name that is unknown,
or an integration that cannot be enabled here, is a usage error, and the
program does not run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys

from atfork import integrations
from atfork.integrations import VARIABLE, one_line, split_names

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run a program with integrations enabled (like python [-m MODULE | SCRIPT])"

# What runs when neither --enable nor ATFORK_INTEGRATIONS names anything:
# every built-in integration that works in any process.
DEFAULT = tuple(name for name in integrations.BUILTIN if name != "uwsgi")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [--enable NAMES]... (-m MODULE | [--] SCRIPT) [ARGS...]"
    parser.add_argument(
        "--enable",
        action="append",
        metavar="NAMES",
        help=(
            "integrations to enable, separated by commas; given more than once, the "
            "names of each are enabled (default: $ATFORK_INTEGRATIONS, "
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
        "script",
        nargs=argparse.REMAINDER,
        metavar="SCRIPT [ARGS]",
        help="a Python file to run; what follows is its arguments (a -- before it ends "
        "the options of run)",
    )


def _names(parser: argparse.ArgumentParser, values: list[str] | None) -> list[str]:
    """The integrations to enable, each once, in the order named."""
    if values is None:
        return split_names(os.environ.get(VARIABLE, "")) or list(DEFAULT)
    chosen = []
    for value in values:
        names = split_names(value)
        if not names:
            parser.error(f"--enable {value!r} names no integration")
        chosen += names
    return list(dict.fromkeys(chosen))


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    chosen = _names(parser, args.enable)
    if args.module is not None:
        if not args.module:
            parser.error("-m needs a MODULE")
        # argparse ends the arguments of -m at a "--" and gives it, and what
        # follows, to SCRIPT: they are the module's arguments.
        module: list[str] = [*args.module, *args.script]
        program, *program_args = module
        if importlib.util.find_spec(program) is None:
            parser.error(f"no module named {program!r}")
    else:
        # A "--" before the script ends the options of run (argparse keeps it).
        script: list[str] = args.script[1:] if args.script[:1] == ["--"] else args.script
        if not script:
            parser.error("a SCRIPT or -m MODULE is required")
        program, *program_args = script
        if not os.path.isfile(program):
            parser.error(f"no such file: {program!r}")
    try:
        integrations.enable(*chosen)
    except Exception as error:  # noqa: BLE001  (any failure to enable is a usage error)
        parser.error(one_line(error))
    os.environ[VARIABLE] = ",".join(chosen)
    sys.argv = [program, *program_args]
    if args.module is not None:
        runpy.run_module(program, run_name="__main__", alter_sys=True)
    else:
        sys.path[0] = os.path.dirname(os.path.abspath(program))
        runpy.run_path(program, run_name="__main__")
    return 0
