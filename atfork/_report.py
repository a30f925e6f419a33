"""How a failed callback is reported: through :func:`sys.unraisablehook`,
in the form CPython gives its own ``os.register_at_fork`` callbacks.

Up to 3.13 CPython passes the callback as ``object`` and the default hook
prints ``err_msg: repr(object)``; from 3.14 on (gh-129354) the repr is part
of ``err_msg`` and ``object`` is None. A report names the hook and the phase
on every version, in that version's form.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from typing import Any

__all__ = ["REPORT_PREFIX", "report", "unraisable_args"]

#: How every report of a failed callback begins.
REPORT_PREFIX = "Exception ignored in atfork "

# Whether err_msg carries the object, as CPython's own reports do from 3.14 on.
_OBJECT_IN_MESSAGE = sys.version_info >= (3, 14)


def _find_args_type() -> Any:
    """``sys.unraisablehook``'s argument type, which CPython does not expose.

    The default hook accepts nothing else, so one report is provoked (a weak
    reference callback that raises) and caught, recognised by its exception:
    its ``object`` differs between versions. Any other report arriving
    meanwhile goes on to the hook that was installed. This runs once, when
    atfork is imported (the import lock serialises it), never at fork time.
    """
    found: list[type] = []
    probe_error = LookupError("atfork probe")
    previous = sys.unraisablehook

    def probe(_: object) -> None:
        raise probe_error

    def catch(args: Any) -> None:
        if args.exc_value is probe_error:
            found.append(type(args))
        else:
            previous(args)

    class Referent:
        pass

    referent = Referent()
    ref = weakref.ref(referent, probe)
    sys.unraisablehook = catch
    try:
        del referent
    finally:
        sys.unraisablehook = previous
    del ref
    if not found:  # pragma: no cover  (every supported CPython reports it)
        raise RuntimeError("cannot find the argument type of sys.unraisablehook")
    return found[0]


_ARGS_TYPE = _find_args_type()


def unraisable_args(exc: BaseException, err_msg: str, obj: object) -> Any:
    """The argument ``sys.unraisablehook`` takes, for ``exc``."""
    return _ARGS_TYPE((type(exc), exc, exc.__traceback__, err_msg, obj))


def report(hook: object, phase: str, exc: BaseException) -> None:
    """Report that ``hook``'s ``phase`` callback raised ``exc``."""
    with contextlib.suppress(BaseException):  # a broken hook must not break the fork
        if _OBJECT_IN_MESSAGE:
            args = unraisable_args(exc, f"{REPORT_PREFIX}{phase} callback {hook!r}", None)
        else:
            args = unraisable_args(exc, f"{REPORT_PREFIX}{phase} callback", hook)
        sys.unraisablehook(args)
