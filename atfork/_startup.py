"""Enable the integrations that ``ATFORK_INTEGRATIONS`` names, at start-up.

Two files installed beside the package import this module when the
interpreter starts and the variable is set (and do nothing else otherwise),
so that a program started by a server (gunicorn, uWSGI, celery, ...) gets
its integrations without a change to its code: ``atfork.pth`` on Python 3.9
- 3.14, and on 3.15+ (PEP 829) ``atfork.start``, whose entry point
``_atfork_startup.enable_from_environment`` sits outside the package so as
not to import it. A module runs once per process: where both files run, the
integrations are enabled once. Names are separated by commas or spaces;
empty items are nothing. Each name is enabled on its own, so a bad one
(unknown, failing to import, or failing to enable here) costs the program
that one integration only: it is reported in one line on stderr that names
it, and the program goes on: start-up is no place to stop it.
"""

from __future__ import annotations

import os
import sys

from atfork import integrations
from atfork.integrations import VARIABLE, one_line, split_names


def enable_from_environment() -> None:
    for name in dict.fromkeys(split_names(os.environ.get(VARIABLE, ""))):
        try:
            integrations.enable(name)
        except Exception as error:  # noqa: BLE001  (reported; the program must start anyway)
            print(f"atfork: {VARIABLE}: {one_line(error)}", file=sys.stderr)


enable_from_environment()
