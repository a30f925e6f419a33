"""The command line: ``python -m atfork COMMAND``.

Each command is a module of its own with ``HELP`` (one line for
``--help``), ``add_arguments(parser)`` and ``run(args) -> int`` (the exit
code); its docstring is the command's description. Adding a command is
adding its module and one line to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import NoReturn

from atfork import __version__

__all__ = ["COMMANDS", "main"]

#: Command name -> the module that implements it, in ``--help`` order.
COMMANDS = {
    "demo": "atfork._demo",
    "run": "atfork._run",
    "doctor": "atfork._doctor",
}


class _Parser(argparse.ArgumentParser):
    """Reports a usage error in one line, and exits with code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    """The parser of ``python -m atfork`` with every command's subparser.
    A command gets its own parser as ``args.parser``, to report errors."""
    top = _Parser(prog="python -m atfork", description="atfork: fork-safety for Python programs.")
    top.add_argument("--version", action="version", version=f"atfork {__version__}")
    commands = top.add_subparsers(
        title="commands", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = commands.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run, parser=command)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command named in ``argv`` (``sys.argv[1:]`` by default) and
    return its exit code."""
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code
