"""Exception and warning classes of atfork."""

from __future__ import annotations

__all__ = ["AtforkWarning"]


class AtforkWarning(UserWarning):
    """Base class for warnings emitted by atfork.

    .. versionadded:: 0.1
    """

    __module__ = "atfork"
