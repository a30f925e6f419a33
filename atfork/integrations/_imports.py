"""Run a function when a module is imported, without importing it.

Integrations must not import the libraries they cover (numpy, SQLAlchemy,
...): they act on what the program imports, before or after ``enable()``.
:func:`when_imported` calls a function at once if the module is imported
already, or else right after the program imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Callable

__all__ = ["imported_type", "when_imported"]

_lock = threading.RLock()
_waiting: dict[str, list[Callable[[ModuleType], None]]] = {}


def when_imported(name: str, func: Callable[[ModuleType], None]) -> None:
    """Call ``func(module)`` once module ``name`` is imported: now if it is
    already, else right after its code has run. ``func`` should check that
    its integration is still enabled. An exception from ``func`` propagates
    to the importer."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _waiting.setdefault(name, []).append(func)
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return
    func(module)


def imported_type(module: str, name: str) -> type | None:
    """The class ``module.name`` if that module is imported, else None
    (nothing is imported)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


class _Loader(importlib.abc.Loader):
    """Wraps a module's own loader to run the waiting functions after it."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        with _lock:
            funcs = _waiting.pop(module.__name__, [])
        for func in funcs:
            func(module)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ... of the real loader
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _waiting:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: importlib.machinery.ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_finder = _Finder()
