"""Running a function when a module is imported (atfork.integrations._imports)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from atfork.integrations._imports import when_imported


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("atfork_probe_")]:
        del sys.modules[name]


def test_calls_at_once_for_an_imported_module() -> None:
    """A module imported already is passed to the function at once."""
    seen: list[ModuleType] = []
    when_imported("json", seen.append)
    assert [sys.modules["json"]] == seen


def test_waits_for_the_import_and_does_not_import(module_dir: Path) -> None:
    """The function runs after the module's code, when the program imports it."""
    (module_dir / "atfork_probe_a.py").write_text("VALUE = 42\n")
    seen: list[int] = []
    when_imported("atfork_probe_a", lambda module: seen.append(module.VALUE))
    assert "atfork_probe_a" not in sys.modules
    assert [] == seen
    import atfork_probe_a  # type: ignore[import-not-found]

    assert [42] == seen
    assert 42 == atfork_probe_a.VALUE


def test_every_waiting_function_runs_once(module_dir: Path) -> None:
    """Several functions wait for one module; each runs once, in order."""
    (module_dir / "atfork_probe_b.py").write_text("")
    seen: list[str] = []
    when_imported("atfork_probe_b", lambda _: seen.append("first"))
    when_imported("atfork_probe_b", lambda _: seen.append("second"))
    import importlib

    import atfork_probe_b  # type: ignore[import-not-found]  # noqa: F401

    importlib.reload(sys.modules["atfork_probe_b"])
    assert ["first", "second"] == seen


def test_submodules_and_packages(module_dir: Path) -> None:
    """Packages and their submodules are found like any module."""
    package = module_dir / "atfork_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text("NAME = 'sub'\n")
    seen: list[str] = []
    when_imported("atfork_probe_pkg.sub", lambda module: seen.append(module.NAME))
    import atfork_probe_pkg.sub  # type: ignore[import-not-found]  # noqa: F401

    assert ["sub"] == seen
