"""Enabling integrations by name (atfork.integrations)."""

from __future__ import annotations

import pytest

import atfork.integrations as integrations


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
