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
from typing import Any, NamedTuple

from atfork import integrations
from atfork.integrations import VARIABLE, one_line, split_names

__all__ = [
    "HELP",
    "TARGET_USAGE",
    "Program",
    "add_arguments",
    "add_target",
    "execute",
    "run",
    "target",
]

HELP = "run a program with integrations enabled (like python [-m MODULE | SCRIPT])"

# What runs when neither --enable nor ATFORK_INTEGRATIONS names anything:
# every built-in integration that works in any process.
DEFAULT = tuple(name for name in integrations.BUILTIN if name != "uwsgi")


#: How a command that runs a program as ``python`` would names it, in its usage.
TARGET_USAGE = "(-m MODULE | [--] SCRIPT) [ARGS...]"


class Program(NamedTuple):
    """A program named on the command line: a script or a module, and the
    arguments that follow it."""

    #: The script's path as given, or the module's name.
    name: str
    args: list[str]
    module: bool


def add_target(parser: argparse.ArgumentParser, command: str) -> None:
    """The arguments that name the program, as ``python`` takes them:
    ``-m MODULE`` or ``SCRIPT``, and everything after it for the program."""
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
        f"the options of {command})",
    )


def target(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Program:
    """The program :func:`add_target` read; a bad one is a usage error."""
    if args.module is not None:
        if not args.module:
            parser.error("-m needs a MODULE")
        # argparse ends the arguments of -m at a "--" and gives it, and what
        # follows, to SCRIPT: they are the module's arguments.
        module: list[str] = [*args.module, *args.script]
        if importlib.util.find_spec(module[0]) is None:
            parser.error(f"no module named {module[0]!r}")
        return Program(module[0], module[1:], True)
    # A "--" before the script ends the options of the command (argparse keeps it).
    script: list[str] = args.script[1:] if args.script[:1] == ["--"] else args.script
    if not script:
        parser.error("a SCRIPT or -m MODULE is required")
    if not os.path.isfile(script[0]):
        parser.error(f"no such file: {script[0]!r}")
    return Program(script[0], script[1:], False)


def execute(program: Program, run_name: str) -> dict[str, Any]:
    """Run ``program`` as ``python`` would, as a module named ``run_name``;
    return its namespace (a copy, from :mod:`runpy`). ``sys.argv`` is
    ``[SCRIPT, *ARGS]``, or for a module ``[its file, *ARGS]``, as with
    ``python -m``, and stays so. Whatever the program raises propagates."""
    sys.argv = [program.name, *program.args]
    if program.module:
        namespace = runpy.run_module(program.name, run_name=run_name, alter_sys=True)
        # runpy puts the module's name back once the module ran.
        sys.argv[0] = namespace.get("__file__") or program.name
        return namespace
    sys.path[0] = os.path.dirname(os.path.abspath(program.name))
    return runpy.run_path(program.name, run_name=run_name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = f"%(prog)s [--enable NAMES]... {TARGET_USAGE}"
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
    add_target(parser, "run")


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
    program = target(parser, args)
    try:
        integrations.enable(*chosen)
    except Exception as error:  # noqa: BLE001  (any failure to enable is a usage error)
        parser.error(one_line(error))
    os.environ[VARIABLE] = ",".join(chosen)
    execute(program, "__main__")
    return 0
