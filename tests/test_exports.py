"""Each public module exports what its documentation names: the contract's
names are in ``__all__``, every name of ``__all__`` has its documentation
(which Sphinx's autodoc renders), and the core's names are documented one
by one."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

import atfork
import atfork.integrations
import atfork.testing
from atfork import _report, pytest_plugin

DOCS = Path(__file__).resolve().parent.parent / "docs"

# The contract's names: those of every integration, and each one's extras.
INTEGRATION = {"enable", "disable", "is_enabled"}
EXTRAS = {
    "threading": {"track"},
    "random": {"track"},
    "db": {"track", "InheritedConnectionError"},
    "http": {"track"},
}


def directives() -> set[tuple[str, str]]:
    """Every autodoc directive of the docs, as (kind, target)."""
    found = set()
    for page in DOCS.rglob("*.rst"):
        found |= set(re.findall(r"^\.\. auto(\w+):: (\S+)$", page.read_text("utf-8"), re.M))
    return found


def undocumented(module: ModuleType) -> list[str]:
    """The names of ``module.__all__`` autodoc would render without text: a
    function or class without a docstring of its own, or a module constant
    without a ``#:`` comment right above its assignment."""
    source = inspect.getsource(module)
    missing = []
    for name in module.__all__:
        if name.startswith("__"):
            continue  # __version__: the package's, documented by its value
        value = getattr(module, name)
        if inspect.isroutine(value) or inspect.isclass(value):
            if not (value.__doc__ or "").strip():
                missing.append(name)
        elif not re.search(rf"^#:.*\n(?:#:.*\n)*{name}\b", source, re.M):
            missing.append(name)
    return missing


def test_the_core_documents_each_export_one_by_one() -> None:
    documented = {
        target.split(".", 1)[1]
        for kind, target in directives()
        if kind != "module" and target.count(".") == 1 and target.startswith("atfork.")
    }
    assert set(atfork.__all__) - {"__version__"} == documented
    assert {"atfork", "Hook"} <= set(atfork.__all__)
    assert [] == undocumented(atfork)


@pytest.mark.parametrize("module", [atfork.testing, atfork.integrations], ids=lambda m: m.__name__)
def test_a_public_module_is_documented_whole(module: ModuleType) -> None:
    assert ("module", module.__name__) in directives()
    assert [] == undocumented(module)


@pytest.mark.parametrize("name", atfork.integrations.BUILTIN)
def test_each_integration_exports_the_contract_and_documents_it(name: str) -> None:
    module = importlib.import_module(f"atfork.integrations.{name}")
    assert INTEGRATION | EXTRAS.get(name, set()) <= set(module.__all__)
    assert ("module", module.__name__) in directives()
    assert [] == undocumented(module)


def test_the_pytest_plugins_report_prefix_is_the_cores() -> None:
    # The plugin keeps a copy: importing atfork from it would install the
    # dispatcher in every pytest run.
    assert _report.REPORT_PREFIX == pytest_plugin._REPORT_PREFIX
