"""atfork: fork-safety for Python programs."""

from atfork._dispatch import check, fork_origin
from atfork._errors import AtforkWarning
from atfork._per_process import ProcessLocal, per_process
from atfork._registry import Hook, atfork, hooks
from atfork._risks import ForkRisk, fork_risks

__all__ = [
    "AtforkWarning",
    "ForkRisk",
    "Hook",
    "ProcessLocal",
    "__version__",
    "atfork",
    "check",
    "fork_origin",
    "fork_risks",
    "hooks",
    "per_process",
]

__version__ = "0.1.0"
