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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# -- enable(): all or nothing, each option to the integrations that take it ----

# The built-in integrations these tests enable in this process.
GENERAL = ("logging", "stdio", "random")


@pytest.fixture
def disabled_after() -> Iterator[None]:
    """The integrations of GENERAL are disabled after the test, whatever it enabled."""
    yield
    for name in GENERAL:
        integrations.get(name).disable()


def enabled() -> list[str]:
    return [name for name in GENERAL if integrations.get(name).is_enabled()]


@pytest.mark.usefixtures("disabled_after")
def test_an_option_goes_to_the_integration_that_takes_it() -> None:
    """An option one of the named integrations takes goes to it alone: the others
    are enabled without it."""
    integrations.enable("logging", "stdio", shared_rotation=True)
    assert ["logging", "stdio"] == enabled()


@pytest.mark.usefixtures("disabled_after")
def test_an_option_no_integration_takes_is_a_type_error() -> None:
    """An option none of the named integrations takes is a TypeError naming it,
    and nothing is enabled."""
    with pytest.raises(TypeError, match="no integration among 'logging', 'stdio' takes 'mode'"):
        integrations.enable("logging", "stdio", mode="derived")
    assert [] == enabled()


@pytest.mark.usefixtures("disabled_after")
@pytest.mark.parametrize(
    ("names", "options", "error", "message"),
    [
        (
            ("logging", "stdio", "random"),
            {"mode": "nope"},
            ValueError,
            "atfork integration 'random' could not be enabled: mode must be 'fresh' or "
            "'derived', not 'nope'",
        ),
        (
            ("stdio", "logging"),
            {"shared_rotation": "yes"},
            TypeError,
            "atfork integration 'logging' could not be enabled: shared_rotation must be a "
            "bool, not str",
        ),
        (
            ("logging", "uwsgi"),
            {},
            RuntimeError,
            "atfork integration 'uwsgi' could not be enabled: the uwsgi integration works "
            "in a uWSGI process only",
        ),
    ],
)
def test_a_failing_integration_enables_none(
    names: tuple[str, ...], options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """When one integration fails to enable, the error names it, keeps its type,
    and those the call enabled before it are disabled again."""
    with pytest.raises(error) as raised:
        integrations.enable(*names, **options)
    assert message == str(raised.value)[: len(message)]
    assert [] == enabled()


@pytest.mark.usefixtures("disabled_after")
def test_a_failing_call_keeps_what_was_enabled_before_it() -> None:
    """Rolling back a failed call leaves enabled an integration that was enabled
    before the call."""
    integrations.enable("stdio")
    with pytest.raises(ValueError, match="'random'"):
        integrations.enable("stdio", "logging", "random", mode="nope")
    assert ["stdio"] == enabled()


class Fake:
    """An integration whose enable() or disable() raises what it is given."""

    def __init__(
        self, on_enable: Exception | None = None, on_disable: Exception | None = None
    ) -> None:
        self.on_enable, self.on_disable, self.enabled = on_enable, on_disable, False

    def enable(self, **options: Any) -> None:
        if self.on_enable:
            raise self.on_enable
        self.enabled = True

    def disable(self) -> None:
        if self.on_disable:
            raise self.on_disable
        self.enabled = False

    def is_enabled(self) -> bool:
        return self.enabled


def test_a_failing_undo_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An integration whose disable() fails as a failed call is undone is named,
    with what it raised, in the error of the call."""
    fakes = {"a": Fake(on_disable=OSError("stuck")), "b": Fake(on_enable=ValueError("no"))}
    monkeypatch.setattr(integrations, "get", fakes.__getitem__)
    with pytest.raises(ValueError, match="could not be enabled") as raised:
        integrations.enable("a", "b")
    assert (
        "atfork integration 'b' could not be enabled: no (and disabling 'a' again raised "
        "OSError: stuck)"
    ) == str(raised.value)


def test_an_error_that_cannot_be_copied_is_raised_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error whose type cannot be made from a message alone is raised itself,
    with a note naming the integration where notes exist (3.11+)."""
    error = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    fakes = {"a": Fake(), "b": Fake(on_enable=error)}
    monkeypatch.setattr(integrations, "get", fakes.__getitem__)
    with pytest.raises(UnicodeDecodeError) as raised:
        integrations.enable("a", "b")
    notes = ["atfork integration 'b' could not be enabled: " + str(error)]
    assert (error, False) == (raised.value, fakes["a"].enabled)
    assert (notes if sys.version_info >= (3, 11) else []) == getattr(error, "__notes__", [])


@pytest.mark.parametrize("name", [["logging", "stdio"], None, 3])
def test_a_name_that_is_not_a_string_is_a_type_error(name: Any) -> None:
    """A name that is not a str (a list of names, say) is a TypeError saying so."""
    with pytest.raises(TypeError) as raised:
        integrations.enable(name)
    message = f"an atfork integration name is a str, not {type(name).__name__}"
    assert message == str(raised.value)[: len(message)]


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


class refusing:  # an integration whose enable() always raises

    @staticmethod
    def enable(**options):
        raise RuntimeError("not here:\\nno server to attach to")

    @staticmethod
    def disable():
        pass

    @staticmethod
    def is_enabled():
        return False
"""

ENTRY_POINTS = """\
[atfork.integrations]
sample = atfork_sample
broken = atfork_sample:not_an_integration
refusing = atfork_sample:refusing
unimportable = atfork_sample_unimportable
"""

# A plug-in module that raises when it is imported.
UNIMPORTABLE = 'raise RuntimeError("needs a server")\n'


def build_wheel(directory: Path) -> Path:
    """A wheel of the distribution atfork-sample, which declares four entry points."""
    dist_info = "atfork_sample-1.0.dist-info"
    files = {
        "atfork_sample.py": SAMPLE,
        "atfork_sample_unimportable.py": UNIMPORTABLE,
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
        import json
        print(json.dumps(i.available()))
    """,
    )
    assert {"sample", "broken", "refusing", "unimportable", *integrations.BUILTIN} == set(
        json.loads(out)
    )


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


def test_entry_point_that_fails_to_import(sample_path: str) -> None:
    """A plug-in whose module raises at import is an ImportError that names it."""
    out = run_with_sample(
        sample_path,
        """
        import atfork.integrations as i
        try:
            i.enable("unimportable")
        except ImportError as error:
            print(error)
    """,
    )
    assert (
        "atfork integration 'unimportable' (entry point 'atfork_sample_unimportable') "
        "could not be imported: RuntimeError: needs a server\n"
    ) == out


def test_an_option_goes_to_each_integration_that_takes_it(sample_path: str) -> None:
    """An option is given to every named integration that takes it, here a
    built-in one by name and a plug-in through its **options."""
    out = run_with_sample(
        sample_path,
        """
        import atfork.integrations as i, atfork_sample
        from atfork.integrations import logging
        i.enable("sample", "logging", "stdio", shared_rotation=True)
        print(atfork_sample.enabled, logging._shared_rotation, i.get("stdio").is_enabled())
    """,
    )
    assert "[{'shared_rotation': True}] True True\n" == out


def test_a_plug_in_that_fails_to_enable_enables_none(sample_path: str) -> None:
    """A plug-in whose enable() raises is named in the error, and the integrations
    enabled before it in the same call are disabled again."""
    out = run_with_sample(
        sample_path,
        """
        import atfork.integrations as i
        try:
            i.enable("sample", "logging", "refusing")
        except RuntimeError as error:
            print(repr(str(error)))
        print(i.get("sample").is_enabled(), i.get("logging").is_enabled())
    """,
    )
    message = (
        "atfork integration 'refusing' could not be enabled: not here:\nno server to attach to"
    )
    assert f"{message!r}\nFalse False\n" == out


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
def test_environment_variable_with_a_plug_in_that_fails(sample_path: str) -> None:
    """A plug-in that fails to import, or to enable, is named in a line of its
    own on stderr; the other integrations named are enabled."""
    result = run_python(
        "import atfork_sample; print(atfork_sample.enabled)",
        env={"PYTHONPATH": sample_path, "ATFORK_INTEGRATIONS": "unimportable,refusing,sample"},
    )
    assert (0, "[{}]\n") == (result.returncode, result.stdout), result.stderr
    assert [
        "atfork: ATFORK_INTEGRATIONS: atfork integration 'unimportable' (entry point "
        "'atfork_sample_unimportable') could not be imported: RuntimeError: needs a server",
        "atfork: ATFORK_INTEGRATIONS: atfork integration 'refusing' could not be enabled: "
        "not here: no server to attach to",
    ] == result.stderr.splitlines()


@needs_pth
def test_without_the_variable_atfork_is_not_imported() -> None:
    """With ATFORK_INTEGRATIONS unset, start-up does not import atfork."""
    result = run_python("import sys; print('atfork' in sys.modules)")
    assert "False\n" == result.stdout


def test_names_are_separated_by_commas_or_spaces() -> None:
    """The variable's value is split on commas and white space."""
    from atfork.integrations import split_names

    assert ["logging", "stdio", "db"] == split_names(" logging,stdio  db, ")


DEAD_PROXY = """
import weakref

class Thing:
    pass

thing = Thing()
proxy = weakref.proxy(thing)
del thing  # the proxy stays on the heap, dead
import atfork.integrations
atfork.integrations.enable("logging", "stdio", "threading", "random")
print("enabled")
"""


def test_heap_scans_pass_a_dead_proxy() -> None:
    """enable() scans the heap by each object's type: a dead weakref.proxy
    there (isinstance() would ask its __class__, and get ReferenceError)
    does not stop it."""
    found = run_python(DEAD_PROXY, timeout=60)
    assert (0, "enabled") == (found.returncode, found.stdout.strip()), found.stderr
