"""atfork: fork-safety for Python programs."""

from atfork._dispatch import check, fork_origin
from atfork._errors import AtforkWarning
from atfork._registry import Hook, atfork, hooks

__all__ = ["AtforkWarning", "Hook", "__version__", "atfork", "check", "fork_origin", "hooks"]

__version__ = "0.1.0"
