"""ATFORK_INTEGRATIONS at interpreter start-up, through each start-up file the
wheel installs: ``atfork.pth`` (Python 3.9 - 3.14) and the entry point that
``atfork.start`` names (PEP 829, Python 3.15+)."""

from __future__ import annotations

import re
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

import atfork
from atfork.testing import run_python

INSTALLED = "site-packages" in atfork.__file__  # as tox installs it, with the start-up files
pytestmark = pytest.mark.skipif(not INSTALLED, reason="the start-up files exist once installed")

START_UP_FILES = ("atfork.pth", "atfork.start", "_atfork_startup.py")

# An empty value is how a test unsets a variable this process may have.
UNSET = {"ATFORK_INTEGRATIONS": ""}

# What Python 3.15's site.py does with a NAME.start file: each line that is
# neither blank nor a comment names a callable in the pkg.mod:callable form,
# which is resolved and called with no arguments.
RUN_START_FILE = """
import os, pkgutil, sys, sysconfig
def run_start_file():
    path = os.path.join(sysconfig.get_paths()["purelib"], "atfork.start")
    with open(path, encoding="utf-8-sig") as lines:
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                pkgutil.resolve_name(line)()
"""

# The entry point form PEP 829 accepts: pkgutil.resolve_name's colon form,
# with the callable required.
ENTRY_POINT = re.compile(r"\w+(\.\w+)*:\w+(\.\w+)*")


def start_file_entries() -> list[str]:
    text = Path(sysconfig.get_paths()["purelib"], "atfork.start").read_text("utf-8-sig")
    return [s for s in map(str.strip, text.splitlines()) if s and not s.startswith("#")]


def test_the_wheel_installs_both_start_up_files() -> None:
    """atfork.pth, atfork.start and the module it names are installed in site-packages."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    recorded = {str(path) for path in metadata.files("atfork") or ()}
    assert dict.fromkeys(START_UP_FILES, (True, True)) == {
        name: (name in recorded, (purelib / name).is_file()) for name in START_UP_FILES
    }


def test_start_file_names_entry_points_site_accepts() -> None:
    """Each entry of atfork.start has the pkg.mod:callable form PEP 829 requires."""
    entries = start_file_entries()
    assert [True] * len(entries) == [bool(ENTRY_POINT.fullmatch(e)) for e in entries]
    assert ["_atfork_startup:enable_from_environment"] == entries


def test_pth_file_enables_the_integrations() -> None:
    """Through atfork.pth, the integrations named are enabled before the program runs."""
    result = run_python(
        "import sys; imported = 'atfork' in sys.modules\n"
        "import atfork.integrations.logging as m; print(imported, m.is_enabled())",
        env={"ATFORK_INTEGRATIONS": "logging"},
    )
    assert (0, "True True\n", "") == (result.returncode, result.stdout, result.stderr)


# Prints which of these integrations the start-up files enabled.
REPORT_ENABLED = (
    "import atfork.integrations as i\n"
    "print([n for n in ('logging', 'stdio', 'random') if i.get(n).is_enabled()])\n"
)


@pytest.mark.parametrize(
    ("value", "enabled", "bad"),
    [
        ("logging,,nope", ["logging"], ["nope"]),
        ("nope,logging, bogus,stdio", ["logging", "stdio"], ["nope", "bogus"]),
        ("uwsgi,logging", ["logging"], ["uwsgi"]),
        (",logging,,stdio,", ["logging", "stdio"], []),
        (" , ", [], []),
    ],
)
def test_pth_file_enables_every_valid_name(value: str, enabled: list[str], bad: list[str]) -> None:
    """Through atfork.pth, every valid name is enabled and each bad one is reported
    in a line of its own that names it; empty items are nothing."""
    result = run_python(REPORT_ENABLED, env={"ATFORK_INTEGRATIONS": value})
    assert (0, f"{enabled}\n") == (result.returncode, result.stdout), result.stderr
    lines = result.stderr.splitlines()
    assert [(True, True)] * len(bad) == [
        (line.startswith("atfork: ATFORK_INTEGRATIONS: "), repr(name) in line)
        for name, line in zip(bad, lines)
    ]
    assert len(bad) == len(lines), result.stderr


def test_pth_file_without_the_variable_does_not_import_atfork() -> None:
    """Through atfork.pth, start-up with the variable unset does not import atfork."""
    result = run_python("import sys; print('atfork' in sys.modules)", env=UNSET)
    assert (0, "False\n") == (result.returncode, result.stdout)


def test_start_file_enables_the_integrations() -> None:
    """Called as Python 3.15 calls it, the entry point of atfork.start enables the
    integrations named."""
    result = run_python(
        RUN_START_FILE
        + "imported = 'atfork' in sys.modules\n"
        + "os.environ['ATFORK_INTEGRATIONS'] = 'logging'\n"
        + "run_start_file()\n"
        + "import atfork.integrations.logging as m; print(imported, m.is_enabled())\n",
        env=UNSET,
    )
    assert (0, "False True\n", "") == (result.returncode, result.stdout, result.stderr)


def test_start_file_without_the_variable_does_not_import_atfork() -> None:
    """With the variable unset, the entry point of atfork.start does not import atfork."""
    result = run_python(
        RUN_START_FILE + "run_start_file(); print('atfork' in sys.modules)\n", env=UNSET
    )
    assert (0, "False\n") == (result.returncode, result.stdout)


def test_start_file_reports_a_bad_name_in_one_line() -> None:
    """Through atfork.start, an unknown name is one line on stderr; the program still runs."""
    result = run_python(
        RUN_START_FILE
        + "os.environ['ATFORK_INTEGRATIONS'] = 'logging, nope'\n"
        + "run_start_file(); print('ran')\n",
        env=UNSET,
    )
    assert (0, "ran\n") == (result.returncode, result.stdout)
    assert result.stderr.startswith(
        "atfork: ATFORK_INTEGRATIONS: no atfork integration named 'nope'"
    )
    assert 1 == len(result.stderr.splitlines())


def test_both_start_up_files_report_a_bad_name_once() -> None:
    """Where both atfork.pth and atfork.start run, a bad name is still reported once
    and the program runs."""
    result = run_python(
        RUN_START_FILE + "run_start_file(); print('ran')\n",
        env={"ATFORK_INTEGRATIONS": "logging, nope"},
    )
    assert (0, "ran\n") == (result.returncode, result.stdout)
    assert 1 == len(result.stderr.splitlines()), result.stderr


def test_both_start_up_files_enable_the_integrations_once() -> None:
    """Where both atfork.pth and atfork.start run, the second registers no hook."""
    result = run_python(
        RUN_START_FILE
        + "from atfork._registry import registry; before = len(registry.hooks())\n"
        + "run_start_file(); print(before > 0, len(registry.hooks()) - before)\n",
        env={"ATFORK_INTEGRATIONS": "logging,stdio"},
    )
    assert (0, "True 0\n", "") == (result.returncode, result.stdout, result.stderr)
