"""Enable the integrations that ``ATFORK_INTEGRATIONS`` names, at start-up.

The file ``atfork.pth``, installed beside the package, imports this module
when the interpreter starts and the variable is set (and does nothing else
otherwise), so that a program started by a server (gunicorn, uWSGI,
celery, ...) gets its integrations without a change to its code. Names are
separated by commas or spaces. A bad name is reported in one line on
stderr and the program goes on: start-up is no place to stop it.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "ATFORK_INTEGRATIONS"


def names(value: str) -> list[str]:
    """The integration names in a value of ``ATFORK_INTEGRATIONS``."""
    return value.replace(",", " ").split()


def enable_from_environment() -> None:
    from atfork import integrations

    try:
        integrations.enable(*names(os.environ.get(VARIABLE, "")))
    except Exception as error:  # noqa: BLE001  (reported; the program must start anyway)
        print(f"atfork: {VARIABLE}: {error}", file=sys.stderr)


enable_from_environment()
