"""The start-up entry point that ``atfork.start`` names (PEP 829, Python 3.15+).

Python 3.15 runs the entry points of ``NAME.start`` files at start-up and,
where a ``NAME.start`` file sits beside ``NAME.pth``, skips the ``import``
lines of that ``.pth`` file (3.18 ignores them everywhere). ``atfork.pth``
keeps enabling the integrations on older Pythons; this entry point does on
newer ones. It lives outside the atfork package, whose import imports
threading, logging and more: with ``ATFORK_INTEGRATIONS`` unset, start-up
costs this small module and one look-up.
"""

from __future__ import annotations

import os


def enable_from_environment() -> None:
    """Import ``atfork._startup``, which enables the integrations that
    ``ATFORK_INTEGRATIONS`` names, if the variable is set.

    A module runs once per process, so the integrations are enabled, and a
    bad name reported, once, however many start-up files get to run.
    """
    if os.environ.get("ATFORK_INTEGRATIONS"):
        import atfork._startup  # noqa: F401  (imported for its effect)
