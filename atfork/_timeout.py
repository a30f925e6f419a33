"""What a deadline may be: one check for the test helpers, the commands and
their ``--timeout`` options.

A timeout is a number of seconds, positive and at most
:data:`MAX_TIMEOUT`. It is checked before anything is started, since a
bad one would otherwise fail after the fork (``OverflowError`` from the
system call the parent waits in), with a child left behind.
"""

from __future__ import annotations

import argparse

__all__ = ["MAX_TIMEOUT", "check_timeout", "seconds"]

#: The longest deadline, in seconds: one week. The helpers wait in
#: ``select()`` and, through :mod:`subprocess`, ``poll()``: the smaller
#: limit, ``poll()``'s 2**31 - 1 milliseconds (about 24.8 days), is where
#: an OverflowError would begin.
MAX_TIMEOUT = 7 * 24 * 60 * 60.0

_RANGE = f"a positive number of seconds, at most {MAX_TIMEOUT:g} (a week)"


def check_timeout(timeout: float) -> float:
    """``timeout`` as a float, if it is a valid deadline.

    :raises TypeError: it is not an int or a float (a bool is not one here).
    :raises ValueError: it is not positive, is NaN or exceeds
        :data:`MAX_TIMEOUT`.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not 0 < timeout <= MAX_TIMEOUT:  # also False for NaN
        raise ValueError(f"timeout must be {_RANGE}, not {timeout!r}")
    return float(timeout)


def seconds(text: str) -> float:
    """The ``type=`` of a ``--timeout`` option: argparse turns the error
    into a one-line usage error with exit code 2."""
    try:
        return check_timeout(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {_RANGE}, not {text!r}") from None
