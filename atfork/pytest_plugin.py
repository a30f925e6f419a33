"""The pytest plugin of atfork, loaded through the ``pytest11`` entry point.

* The fixture ``atfork_child`` runs a function in a forked child with a
  deadline (:func:`atfork.testing.run_in_child`); its default deadline is the
  ini option ``atfork_timeout`` (30 seconds).
* ``--atfork-strict`` (or the ini option ``atfork_strict = true``) fails a
  test when an atfork callback raised during it: in this process, or in a
  child of ``atfork_child``, whose callback errors come back to the parent.
  The failure shows each report as the default unraisable hook prints it.

The ini values are read once, at start-up: a bad one stops the run there
with a usage error.

atfork itself is imported only when a test uses the fixture or the strict
option is on, so that having the plugin installed changes nothing else.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import sys
import traceback
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import pytest

if TYPE_CHECKING:
    from pluggy import Result

__all__ = ["atfork_child"]

T = TypeVar("T")
_REPORT_PREFIX = "Exception ignored in atfork "
# The ini and command-line values, as pytest_configure read them.
_STRICT = pytest.StashKey[bool]()
_TIMEOUT = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("atfork", "fork safety (atfork)")
    group.addoption(
        "--atfork-strict",
        action="store_true",
        default=None,
        help="fail a test when an atfork callback raised during it",
    )
    parser.addini(
        "atfork_strict", "fail a test when an atfork callback raised during it", type="bool"
    )
    parser.addini(
        "atfork_timeout", "default deadline of the atfork_child fixture, in seconds", default="30"
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        strict = config.getini("atfork_strict")
    except (ValueError, pytest.UsageError) as exc:  # pytest 9 raises the usage error itself
        raise pytest.UsageError(f"atfork_strict must be true or false ({exc})") from None
    option = config.getoption("atfork_strict")
    config.stash[_STRICT] = bool(strict if option is None else option)
    config.stash[_TIMEOUT] = _timeout(config.getini("atfork_timeout"))


def _timeout(value: object) -> float:
    try:
        timeout = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise pytest.UsageError(
            f"atfork_timeout must be a number of seconds, not {value!r}"
        ) from None
    if not 0 < timeout < math.inf:  # nan too
        raise pytest.UsageError(f"atfork_timeout must be positive and finite, not {value!r}")
    return timeout


def _format_report(args: Any) -> str:
    """An atfork report as the default unraisable hook prints it: the message
    (up to 3.13 followed by the hook; from 3.14 on it names the hook), then
    the traceback. A child's report is a ChildCallbackError whose message
    holds the child's traceback."""
    head = f"{args.err_msg}:" if args.object is None else f"{args.err_msg}: {args.object!r}"
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    return f"{head}\n{text.rstrip()}"


@pytest.fixture
def atfork_child(pytestconfig: pytest.Config) -> Callable[..., Any]:
    """Run ``func(*args)`` in a forked child and return its result::

        def test_child_can_log(atfork_child):
            assert atfork_child(logging.getLogger("x").warning, "hi") is None

    Takes ``timeout=`` (seconds) like :func:`atfork.testing.run_in_child`;
    the default is the ini option ``atfork_timeout``.
    """
    from atfork.testing import run_in_child

    default = pytestconfig.stash[_TIMEOUT]

    def run(func: Callable[..., T], *args: Any, timeout: float = default) -> T:
        return run_in_child(func, *args, timeout=timeout)

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Result[None], None]:
    if not item.config.stash[_STRICT]:
        yield
        return
    failures: list[str] = []
    previous = sys.unraisablehook

    def keep(args: Any) -> None:
        if str(args.err_msg).startswith(_REPORT_PREFIX):
            failures.append(_format_report(args))
        else:
            previous(args)

    sys.unraisablehook = keep
    try:
        outcome = yield
    finally:
        sys.unraisablehook = previous
    if failures and outcome.exception is None:
        outcome.force_exception(
            pytest.fail.Exception(
                "atfork callbacks raised during the test (--atfork-strict):\n"
                + "\n".join(failures),
                pytrace=False,
            )
        )
