"""Enabling integrations by name (atfork.integrations)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from free_threading import FREE_THREADED, INTERPRETER_SKIP

import atfork.integrations as integrations
from atfork.testing import run_python


def test_available_lists_the_builtin_integrations() -> None:
    """available() names every built-in integration, sorted."""
    names = integrations.available()
    assert sorted(names) == names
    assert set(integrations.BUILTIN) <= set(names)


def test_unknown_name_lists_the_available_ones() -> None:
    """An unknown name raises ValueError naming what is available."""
    with pytest.raises(ValueError, match="no atfork integration named 'nope'; available: "):
        integrations.enable("nope")


def test_names_are_checked_before_anything_is_enabled() -> None:
    """One unknown name among several enables none of them."""
    with pytest.raises(ValueError, match="nope"):
        integrations.enable(*integrations.BUILTIN, "nope")
    assert not any(integrations.get(name).is_enabled() for name in integrations.BUILTIN)


GIL_AFTER_ENABLING = """
import json, os, sys, types
# uwsgi is enabled in a uWSGI process only: these stand for the modules
# that uWSGI provides there.
uwsgi = types.ModuleType("uwsgi")
uwsgi.opt = {"py-call-uwsgi-fork-hooks": True}
uwsgidecorators = types.ModuleType("uwsgidecorators")
uwsgidecorators.postfork_chain = []
sys.modules.update(uwsgi=uwsgi, uwsgidecorators=uwsgidecorators)
import atfork, atfork.integrations
from atfork.testing import wait_child
names = atfork.integrations.available()
atfork.integrations.enable(*names)
pid = os.fork()
if pid == 0:
    os._exit(sys._is_gil_enabled())
print(json.dumps({
    "enabled": [name for name in names if atfork.integrations.get(name).is_enabled()],
    "gil": sys._is_gil_enabled(),
    "child's gil": wait_child(pid),
}))
"""


@pytest.mark.skipif(
    not FREE_THREADED, reason=f"{INTERPRETER_SKIP}the GIL is disabled on a free-threaded build only"
)
def test_enabling_every_integration_keeps_the_gil_disabled() -> None:
    """On the free-threaded build, importing atfork, enabling every available
    integration and forking leave the GIL disabled, in the parent and in the
    child."""
    run = run_python(GIL_AFTER_ENABLING, env={"PYTHONWARNINGS": "error"})
    assert 0 == run.returncode, run.stderr
    found = json.loads(run.stdout)
    assert set(integrations.BUILTIN) <= set(found["enabled"])
    assert {"enabled": integrations.available(), "gil": False, "child's gil": 0} == found


# -- third-party integrations, from a real distribution ------------------------

SAMPLE = """
enabled = []

def enable(**options):
    enabled.append(options)

def disable():
    enabled.clear()

def is_enabled():
    return bool(enabled)

not_an_integration = object()
"""

ENTRY_POINTS = """\
[atfork.integrations]
sample = atfork_sample
broken = atfork_sample:not_an_integration
"""


def build_wheel(directory: Path) -> Path:
    """A wheel of the distribution atfork-sample, which declares two entry points."""
    dist_info = "atfork_sample-1.0.dist-info"
    files = {
        "atfork_sample.py": SAMPLE,
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\nName: atfork-sample\nVersion: 1.0\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": ENTRY_POINTS,
    }
    wheel = directory / "atfork_sample-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        record = []
        for name, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
            archive.writestr(name, data)
        record.append(f"{dist_info}/RECORD,,")
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory where pip installed the sample distribution, plus atfork's own."""
    directory = tmp_path_factory.mktemp("sample")
    target = directory / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(build_wheel(directory)),
        ],
        check=True,
        timeout=120,
    )
    atfork_parent = os.path.dirname(os.path.dirname(os.path.dirname(integrations.__file__)))
    return os.pathsep.join([str(target), atfork_parent])


def run_with_sample(sample_path: str, source: str) -> str:
    result = run_python(textwrap.dedent(source), env={"PYTHONPATH": sample_path}, timeout=60)
    assert 0 == result.returncode, result.stderr
    return result.stdout


def test_entry_points_are_available(sample_path: str) -> None:
    """An installed distribution's entry points appear in available()."""
    out = run_with_sample(
        sample_path,
        """
        import atfork.integrations as i
        print(i.available())
    """,
    )
    assert {"sample", "broken", *integrations.BUILTIN} == set(eval(out))


def test_entry_point_integration_is_enabled_with_options(sample_path: str) -> None:
    """enable(name, **options) imports the entry point and calls its enable()."""
    out = run_with_sample(
        sample_path,
        """
        import atfork.integrations as i
        i.enable("sample", level=3)
        import atfork_sample
        print(atfork_sample.enabled, i.get("sample").is_enabled())
    """,
    )
    assert "[{'level': 3}] True\n" == out


def test_entry_point_that_is_not_an_integration(sample_path: str) -> None:
    """An entry point naming an object without enable/disable/is_enabled is a TypeError."""
    out = run_with_sample(
        sample_path,
        """
        import atfork.integrations as i
        try:
            i.enable("broken")
        except TypeError as error:
            print(error)
    """,
    )
    assert "is not an atfork integration: it lacks enable, disable, is_enabled" in out


# -- ATFORK_INTEGRATIONS: enabling at interpreter start-up (atfork.pth) --------

INSTALLED = "site-packages" in integrations.__file__  # as tox installs it, with atfork.pth
needs_pth = pytest.mark.skipif(not INSTALLED, reason="atfork.pth is only active when installed")


@needs_pth
def test_environment_variable_enables_integrations_at_startup(sample_path: str) -> None:
    """ATFORK_INTEGRATIONS enables the named integrations before the program runs."""
    result = run_python(
        "import atfork_sample; print(atfork_sample.enabled)",
        env={"PYTHONPATH": sample_path, "ATFORK_INTEGRATIONS": "sample"},
    )
    assert (0, "[{}]\n") == (result.returncode, result.stdout), result.stderr


@needs_pth
def test_environment_variable_with_an_unknown_name(sample_path: str) -> None:
    """An unknown name is one line on stderr; the program still runs."""
    result = run_python(
        "print('ran')", env={"PYTHONPATH": sample_path, "ATFORK_INTEGRATIONS": "sample, nope"}
    )
    assert (0, "ran\n") == (result.returncode, result.stdout)
    assert result.stderr.startswith(
        "atfork: ATFORK_INTEGRATIONS: no atfork integration named 'nope'; available: "
    )
    assert 1 == len(result.stderr.splitlines())


@needs_pth
def test_without_the_variable_atfork_is_not_imported() -> None:
    """With ATFORK_INTEGRATIONS unset, start-up does not import atfork."""
    result = run_python("import sys; print('atfork' in sys.modules)")
    assert "False\n" == result.stdout


def test_names_are_separated_by_commas_or_spaces() -> None:
    """The variable's value is split on commas and white space."""
    from atfork.integrations import split_names

    assert ["logging", "stdio", "db"] == split_names(" logging,stdio  db, ")
