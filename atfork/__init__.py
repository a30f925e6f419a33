"""atfork: fork-safety for Python programs."""

from atfork._errors import AtforkWarning
from atfork._registry import Hook, atfork

__all__ = ["AtforkWarning", "Hook", "__version__", "atfork"]

__version__ = "0.1.0"
