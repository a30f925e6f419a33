"""The pytest plugin: the atfork_child fixture and --atfork-strict (atfork.pytest_plugin)."""

from __future__ import annotations

import os
from importlib import metadata

import pytest

import atfork

INSTALLED = "site-packages" in atfork.__file__  # as tox installs it, not the source tree


@pytest.fixture
def plugin_args(pytestconfig: pytest.Config) -> list[str]:
    """How an inner run gets the plugin: by its entry point when this run
    loaded it that way, else by name."""
    return [] if pytestconfig.pluginmanager.hasplugin("atfork") else ["-p", "atfork.pytest_plugin"]


@pytest.mark.skipif(not INSTALLED, reason="atfork is imported from the source tree")
def test_entry_point_loads_the_plugin(pytestconfig: pytest.Config) -> None:
    """Installed, atfork declares its plugin in the pytest11 group, and pytest loads it."""
    entry_points = metadata.distribution("atfork").entry_points
    assert ["atfork.pytest_plugin"] == [ep.value for ep in entry_points if ep.group == "pytest11"]
    assert pytestconfig.pluginmanager.hasplugin("atfork")


def test_fixture_runs_the_function_in_a_child(
    pytester: pytest.Pytester, plugin_args: list[str]
) -> None:
    """atfork_child runs a function in a forked child and returns its result."""
    pytester.makepyfile(
        """
        import os

        def test_child(atfork_child):
            assert os.getpid() == atfork_child(os.getppid)
            assert 6 == atfork_child(lambda a, b: a * b, 2, 3)
        """
    )
    pytester.runpytest(*plugin_args).assert_outcomes(passed=1)


def test_fixture_deadline_comes_from_the_ini_file(
    pytester: pytest.Pytester, plugin_args: list[str]
) -> None:
    """atfork_timeout sets the fixture's default deadline; a hung child fails the test."""
    pytester.makeini("[pytest]\natfork_timeout = 0.5\n")
    pytester.makepyfile(
        """
        import threading

        def test_hangs(atfork_child):
            atfork_child(threading.Event().wait)
        """
    )
    result = pytester.runpytest(*plugin_args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ChildTimeoutError*still running after 0.5 s*"])


FAILING_CALLBACKS = """
import atfork

def boom():
    raise RuntimeError("callback failed")

def test_forks(atfork_child):
    hook = atfork.atfork({phase}=boom, name="failing")
    try:
        assert 1 == atfork_child(lambda: 1)
    finally:
        hook.unregister()
"""


@pytest.mark.parametrize("phase", ["prepare", "parent", "child"])
def test_strict_fails_a_test_whose_callbacks_raised(
    pytester: pytest.Pytester, plugin_args: list[str], phase: str
) -> None:
    """With --atfork-strict, a callback that raised (in parent or child) fails the test."""
    pytester.makepyfile(FAILING_CALLBACKS.format(phase=phase))
    result = pytester.runpytest(*plugin_args, "--atfork-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*atfork callbacks raised during the test*",
            f"Exception ignored in atfork {phase} callback*",
        ]
    )
    assert "<atfork.Hook 'failing' priority=0 active>" in result.stdout.str()


def test_strict_from_the_ini_file(pytester: pytest.Pytester, plugin_args: list[str]) -> None:
    """atfork_strict = true in the ini file has the same effect."""
    pytester.makeini("[pytest]\natfork_strict = true\n")
    pytester.makepyfile(FAILING_CALLBACKS.format(phase="child"))
    pytester.runpytest(*plugin_args).assert_outcomes(failed=1)


def test_without_strict_the_test_passes(
    pytester: pytest.Pytester, plugin_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the option a callback error does not fail the test by itself."""
    pytester.makepyfile(FAILING_CALLBACKS.format(phase="child"))
    # In a subprocess: the report must not reach this run's own unraisable check.
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.dirname(atfork.__file__)))
    result = pytester.runpytest_subprocess(*plugin_args, "-p", "no:unraisableexception")
    result.assert_outcomes(passed=1)


BAD_INI = {
    "atfork_timeout = abc": "atfork_timeout must be a number of seconds, not 'abc'",
    "atfork_timeout = 0": "atfork_timeout must be positive and finite, not '0'",
    "atfork_timeout = -1": "atfork_timeout must be positive and finite, not '-1'",
    "atfork_timeout = inf": "atfork_timeout must be positive and finite, not 'inf'",
    "atfork_strict = maybe": "atfork_strict must be true or false (*maybe*)",
}


@pytest.mark.parametrize(("line", "message"), BAD_INI.items(), ids=BAD_INI)
def test_a_bad_ini_value_is_a_usage_error_at_start_up(
    pytester: pytest.Pytester, plugin_args: list[str], line: str, message: str
) -> None:
    """A bad atfork ini value stops the run before any test, with a usage error naming it."""
    pytester.makeini(f"[pytest]\n{line}\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(*plugin_args)
    assert pytest.ExitCode.USAGE_ERROR == result.ret
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


@pytest.mark.parametrize("phase", ["prepare", "parent", "child"])
def test_strict_report_prints_the_traceback_as_lines(
    pytester: pytest.Pytester, plugin_args: list[str], phase: str
) -> None:
    """The strict failure shows each report's message, then its traceback, line
    by line, as the default unraisable hook does; a child's too."""
    pytester.makepyfile(FAILING_CALLBACKS.format(phase=phase))
    result = pytester.runpytest(*plugin_args, "--atfork-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"Exception ignored in atfork {phase} callback*",
            "Traceback (most recent call last):",
            '*File "*test_strict_report_prints_the_traceback_as_lines.py", line *, in boom',
            '*raise RuntimeError("callback failed")',
            "RuntimeError: callback failed",
        ]
    )
    result.stdout.no_fnmatch_line("*\\n*")
