"""The command line, python -m atfork (atfork._cli and its commands)."""

from __future__ import annotations

from typing import Any, Callable

import pytest

import atfork
from atfork import _cli


def test_help_lists_the_commands(atfork_cli: Callable[..., Any]) -> None:
    """--help names every command."""
    done = atfork_cli("--help")
    assert 0 == done.returncode
    for name in _cli.COMMANDS:
        assert f"    {name} " in done.stdout


def test_version(atfork_cli: Callable[..., Any]) -> None:
    """--version prints atfork's version and exits 0."""
    done = atfork_cli("--version")
    assert (0, f"atfork {atfork.__version__}\n", "") == (
        done.returncode,
        done.stdout,
        done.stderr,
    )


def test_a_command_is_required() -> None:
    """Without a command, usage and exit code 2."""
    with pytest.raises(SystemExit) as stopped:
        _cli.main([])
    assert 2 == stopped.value.code


def test_demo(atfork_cli: Callable[..., Any]) -> None:
    """The demo shows the plain child hung in a logging call, killed at its
    deadline, and the child with atfork logging; it exits 0."""
    done = atfork_cli("demo", "--timeout", "2")
    assert 0 == done.returncode, done.stdout + done.stderr
    plain, fixed = done.stdout.split("\n1. ")[1].split("\n2. ")
    assert "the child HUNG, and was killed after 2 s. Where it hung:" in plain
    assert "logging" in plain
    assert "in child (" in plain
    assert "the child logged its line in " in fixed
    assert "atfork works" in fixed


@pytest.mark.usefixtures("nothing_starts")
@pytest.mark.parametrize("timeout", ["inf", "1e12", "604801", "nan", "0", "-1", "abc"])
@pytest.mark.parametrize("command", ["demo", "doctor"])
def test_commands_reject_a_bad_timeout(
    command: str, timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --timeout that is not a positive number of seconds up to a week is a one-line usage
    error with exit code 2, before any process starts."""
    with pytest.raises(SystemExit) as stopped:
        _cli.main([command, "--timeout", timeout])
    assert (
        2,
        f"python -m atfork {command}: error: argument --timeout: must be a positive number of "
        f"seconds, at most 604800 (a week), not {timeout!r} (see --help)\n",
    ) == (stopped.value.code, capsys.readouterr().err)
