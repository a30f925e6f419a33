"""python -m atfork run: a program with integrations enabled (atfork._run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

import atfork

# The directory holding the atfork package, for the interpreters started here.
SOURCE = os.path.dirname(atfork.__path__[0])

# What run enables when told nothing: every built-in integration but uwsgi.
DEFAULT = [
    "db",
    "django",
    "http",
    "logging",
    "prometheus",
    "random",
    "sentry",
    "stdio",
    "threading",
]

REPORT = """
import json, os, sys
from atfork import integrations
print(json.dumps({
    "name": __name__,
    "argv": sys.argv,
    "enabled": [n for n in integrations.BUILTIN if n != "uwsgi"
                and integrations.get(n).is_enabled()],
    "variable": os.environ.get("ATFORK_INTEGRATIONS"),
}))
"""


def test_runs_a_script_as_main_with_its_arguments(
    tmp_path: Path, atfork_cli: Callable[..., Any]
) -> None:
    """A script runs as __main__, with its arguments, every general integration enabled."""
    (tmp_path / "report.py").write_text(REPORT)
    done = atfork_cli("run", "report.py", "a", "--flag")
    assert 0 == done.returncode, done.stderr
    assert {
        "name": "__main__",
        "argv": ["report.py", "a", "--flag"],
        "enabled": DEFAULT,
        "variable": ",".join(DEFAULT),
    } == json.loads(done.stdout)


def test_runs_a_module_with_the_integrations_named(
    tmp_path: Path, atfork_cli: Callable[..., Any]
) -> None:
    """-m runs a module as __main__; --enable picks the integrations; options after
    the module belong to it."""
    (tmp_path / "report.py").write_text(REPORT)
    done = atfork_cli("run", "--enable", "stdio,random", "-m", "report", "--verbose", "x")
    assert 0 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    # As with python -m, argv[0] is the module's file.
    argv0 = str(tmp_path / "report.py")
    assert ("__main__", [argv0, "--verbose", "x"]) == (report["name"], report["argv"])
    assert (["random", "stdio"], "stdio,random") == (report["enabled"], report["variable"])


def test_the_variable_chooses_when_no_option_does(
    tmp_path: Path, atfork_cli: Callable[..., Any]
) -> None:
    """Without --enable, ATFORK_INTEGRATIONS names the integrations."""
    (tmp_path / "report.py").write_text(REPORT)
    done = atfork_cli("run", "report.py", env={"ATFORK_INTEGRATIONS": "logging"})
    assert ["logging"] == json.loads(done.stdout)["enabled"], done.stderr


def test_the_programs_exit_code_is_kept(tmp_path: Path, atfork_cli: Callable[..., Any]) -> None:
    """The program's SystemExit becomes the command's exit code."""
    (tmp_path / "exits.py").write_text("raise SystemExit(3)\n")
    assert 3 == atfork_cli("run", "exits.py").returncode


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--enable", "logging,nope", "x.py"], "no atfork integration named 'nope'; available: "),
        (["-m", "no_such_module_here"], "no module named 'no_such_module_here'"),
        (["missing.py"], "no such file: 'missing.py'"),
        ([], "a SCRIPT or -m MODULE is required"),
        (["-m"], "-m needs a MODULE"),
        (["--enable", "uwsgi", "x.py"], "atfork integration 'uwsgi' could not be enabled: "),
        (["--enable", "", "x.py"], "--enable '' names no integration"),
        (["--enable", ",", "x.py"], "--enable ',' names no integration"),
        (["--enable", "logging", "--enable", "", "x.py"], "--enable '' names no integration"),
        (["--"], "a SCRIPT or -m MODULE is required"),
    ],
)
def test_bad_command_lines_are_one_line_errors(
    tmp_path: Path, atfork_cli: Callable[..., Any], args: list[str], message: str
) -> None:
    """A bad name, an integration that cannot be enabled here, or a bad target is a
    one-line error and exit code 2; nothing runs."""
    (tmp_path / "x.py").write_text("print('ran')\n")
    done = atfork_cli("run", *args)
    assert (2, "") == (done.returncode, done.stdout)
    assert 1 == len(done.stderr.splitlines()), done.stderr
    assert done.stderr.startswith("python -m atfork run: error: ")
    assert message in done.stderr


PLUG_IN = """
def enable(**options):
    raise RuntimeError("not here:\\nno server to attach to")

def disable():
    pass

def is_enabled():
    return False
"""


def test_a_plug_in_that_fails_to_enable_is_a_one_line_error(
    tmp_path: Path, atfork_cli: Callable[..., Any]
) -> None:
    """A plug-in whose enable() raises is a one-line error naming it, and exit code 2."""
    (tmp_path / "x.py").write_text("print('ran')\n")
    (tmp_path / "refusing_plug_in.py").write_text(PLUG_IN)
    dist_info = tmp_path / "refusing_plug_in-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: refusing-plug-in\n")
    (dist_info / "entry_points.txt").write_text(
        "[atfork.integrations]\nrefusing = refusing_plug_in\n"
    )
    done = atfork_cli(
        "run",
        "--enable",
        "logging,refusing",
        "x.py",
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), SOURCE])},
    )
    assert (
        2,
        "",
        "python -m atfork run: error: atfork integration 'refusing' could not be enabled: "
        "not here: no server to attach to (see --help)\n",
    ) == (done.returncode, done.stdout, done.stderr)


def test_enable_options_add_up(tmp_path: Path, atfork_cli: Callable[..., Any]) -> None:
    """--enable given more than once enables the names of each, once each."""
    (tmp_path / "report.py").write_text(REPORT)
    done = atfork_cli(
        "run", "--enable", "stdio", "--enable", "random", "--enable", "stdio", "report.py"
    )
    report = json.loads(done.stdout)
    assert (["random", "stdio"], "stdio,random") == (report["enabled"], report["variable"])


@pytest.mark.parametrize(
    ("args", "argv"),
    [
        (["--", "report.py", "a"], ["report.py", "a"]),
        (["--enable", "logging", "--", "report.py", "--", "x"], ["report.py", "--", "x"]),
        (["report.py", "--", "x"], ["report.py", "--", "x"]),
        (["-m", "report", "--", "x"], ["{report}", "--", "x"]),
        (["-m", "report", "a", "--", "--enable", "x"], ["{report}", "a", "--", "--enable", "x"]),
    ],
)
def test_a_double_dash(
    tmp_path: Path, atfork_cli: Callable[..., Any], args: list[str], argv: list[str]
) -> None:
    """A "--" before the program ends the options of run; after the program it is
    the program's argument."""
    (tmp_path / "report.py").write_text(REPORT)
    done = atfork_cli("run", *args)
    assert 0 == done.returncode, done.stderr
    report = str(tmp_path / "report.py")
    assert [a.format(report=report) for a in argv] == json.loads(done.stdout)["argv"]


SIBLINGS = textwrap.dedent("""
    import json, random
    from atfork.testing import run_in_child
    private = random.Random(1234)  # a program's own generator, seeded once
    from atfork.integrations import random as atfork_random
    atfork_random.track(private)
    print(json.dumps([run_in_child(private.random) for _ in range(3)]))
""")


def test_a_program_run_plainly_and_with_atfork(
    tmp_path: Path, atfork_cli: Callable[..., Any]
) -> None:
    """The same program: its forked children repeat each other under plain
    python, and differ under python -m atfork run."""
    (tmp_path / "siblings.py").write_text(SIBLINGS)
    plain = subprocess.run(
        [sys.executable, "siblings.py"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": SOURCE,
        },
    )
    assert 1 == len(set(json.loads(plain.stdout))), plain.stderr
    done = atfork_cli("run", "siblings.py")
    assert 3 == len(set(json.loads(done.stdout))), done.stderr
