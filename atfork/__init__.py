"""atfork: fork-safety for Python programs."""

from atfork._dispatch import check, fork_origin
from atfork._errors import AtforkWarning
from atfork._per_process import ProcessLocal, per_process
from atfork._registry import Hook, atfork, hooks

__all__ = [
    "AtforkWarning",
    "Hook",
    "ProcessLocal",
    "__version__",
    "atfork",
    "check",
    "fork_origin",
    "hooks",
    "per_process",
]

__version__ = "0.1.0"
