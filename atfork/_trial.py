"""The trial forks of ``python -m atfork doctor``: children that do, step by
step and under a deadline, what a forked child of the program would do.

A trial child first points its descriptors 1 and 2 at a file of its own, so
that nothing it writes reaches the program's output. Then, in order, it
flushes the standard streams it inherited (what comes out is the parent's
output written a second time), sends a record through each logging handler
that writes to descriptor 1 or 2 and takes the lock of every other
handler's stream (a record in a log file would be the program's to keep),
tries the locks of every handler, prints, imports a module, tries the
program's locks without waiting, and draws from every random generator
found. Before each step it writes the step's number to a pipe: a child
killed at its deadline is known to have hung in the last step it named.
The next child skips that step; after :data:`MAX_HANGS` hangs no further
child is started. Two children that finished are compared: the same draws
from a generator are a finding.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import struct
import sys
import tempfile
import threading
from typing import Any, Callable, NamedTuple

from atfork._inspection import (
    RANDOM_TRACK,
    THREADING_TRACK,
    Finding,
    Inspection,
    describe,
    finding,
    handler_stream,
    is_a,
    on_loggers,
)
from atfork.integrations import _tracked_kinds
from atfork.testing import ChildTimeoutError, run_in_child

__all__ = ["MAX_HANGS", "Step", "Trial", "plan", "trial"]

#: After this many hung children, no further one is started.
MAX_HANGS = 3

# A standard library module unlikely to be imported already: the trial child
# imports it, which needs the import machinery's locks.
_TRIAL_IMPORTS = ("colorsys", "netrc", "shlex", "fractions")

_NUMBER = struct.Struct("!i")
_DONE = -1  # written to the progress pipe after the last step
_PREVIEW = 120  # characters of duplicated output shown


class Step(NamedTuple):
    """One thing a trial child does, and what a finding about it says."""

    #: What the child was doing, for "hung ... {what}".
    what: str
    integration: str | None
    track: str | None
    #: What to pass to ``track``, for a person.
    target: str
    #: In the child: ``run(capture_fd)`` -> a picklable value.
    run: Callable[[int], Any]
    #: In the parent: the values of the children that ran it -> findings.
    judge: Callable[[list[Any]], list[Finding]]


def _nothing(values: list[Any]) -> list[Finding]:
    return []


def _fd(stream: Any) -> int | None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file, detached or closed
        return None
    return fd if isinstance(fd, int) else None


# -- the standard streams -----------------------------------------------------


def _flush_step(name: str) -> Step:
    def run(capture: int) -> tuple[int, str]:
        # Looked up in the child: the program may have replaced it.
        stream = getattr(sys, name)
        if stream is None or _fd(stream) not in (1, 2):
            return 0, ""
        start = os.lseek(capture, 0, os.SEEK_CUR)
        stream.flush()
        size = os.lseek(capture, 0, os.SEEK_CUR) - start
        return size, os.pread(capture, _PREVIEW, start).decode("utf-8", "replace")

    def judge(values: list[tuple[int, str]]) -> list[Finding]:
        size, preview = max(values, default=(0, ""))
        if not size:
            return []
        return [
            finding(
                "stdio",
                f"a trial child wrote again {size} byte(s) that the parent had in "
                f"sys.{name}'s buffer at the fork ({preview.splitlines()[0][:60]!r}...): "
                "every forked child writes the parent's pending output once more when it "
                "flushes or exits",
                integration="stdio",
                source="trial",
            )
        ]

    return Step(f"flushing sys.{name}, inherited from the parent", "stdio", None, "", run, judge)


def _print(capture: int) -> None:
    if _fd(sys.stdout) in (1, 2):
        print(f"atfork doctor: trial child {os.getpid()} can print", flush=True)


# -- logging ------------------------------------------------------------------


def _lock_attributes(handler: Any) -> list[tuple[str, Any]]:
    """The locks a handler keeps as attributes (and those of its conditions
    and queues), by attribute name."""
    kinds = (type(threading.Lock()), type(threading.RLock()), *_tracked_kinds.RLOCKS)
    queue = sys.modules.get("queue")
    found = []
    for attr, value in list(vars(handler).items()):
        if is_a(value, kinds):
            found.append((attr, value))
        elif is_a(value, threading.Condition):
            found.append((attr, vars(value).get("_lock")))
        elif queue is not None and is_a(value, queue.Queue):
            found.append((f"{attr}.mutex", value.mutex))
    return [(attr, lock) for attr, lock in found if hasattr(lock, "acquire")]


def _free(lock: Any) -> bool:
    """Whether ``lock`` can be taken now (then it is released again)."""
    if lock.acquire(False):
        lock.release()
        return True
    return False


def _handler_step(handler: Any, loggers: list[str]) -> Step:
    where = f"{handler!r} {on_loggers(loggers)}"

    def run(capture: int) -> str:
        held = [attr for attr, lock in _lock_attributes(handler) if not _free(lock)]
        if held:
            return ", ".join(held)
        stream = handler_stream(handler)  # in the child: logging may have replaced it
        if stream is None:
            return ""
        if _fd(stream) in (1, 2):  # the trial child's own file: a real record is harmless
            logging = sys.modules["logging"]
            record = logging.LogRecord(
                loggers[0] if loggers else "atfork.doctor",
                logging.WARNING,
                __file__,
                0,
                "atfork doctor: trial child %d can log",
                (os.getpid(),),
                None,
            )
            handler.handle(record)
        else:
            # Another file: writing nothing takes and releases the lock of
            # its buffer, and adds no line to the program's log.
            buffer = getattr(stream, "buffer", stream)
            if isinstance(buffer, (io.BufferedWriter, io.BufferedRandom)):
                with contextlib.suppress(ValueError):  # closed: nothing to hang on
                    buffer.write(b"")
        return ""

    def judge(values: list[str]) -> list[Finding]:
        held = next((v for v in values if v), "")
        if not held:
            return []
        return [
            finding(
                "logging",
                f"{where}: its {held} was held at the fork by a thread that is not in the "
                "child, so the child's next record through it hangs",
                integration="logging",
                source="trial",
            )
        ]

    stream = handler_stream(handler)
    if stream is None:
        action = "trying the locks of"
    elif _fd(stream) in (1, 2):
        action = "logging a record through"
    else:
        action = "taking the lock of the stream of"
    return Step(f"{action} {where}", "logging", None, "", run, judge)


# -- locks, imports -----------------------------------------------------------


def _locks_step(locks: list[tuple[str, Any, Any]]) -> Step:
    def run(capture: int) -> list[str]:
        return [name for name, _, lock in locks if not _free(lock)]

    def judge(values: list[list[str]]) -> list[Finding]:
        names = dict.fromkeys(name for value in values for name in value)
        kinds = {name: describe(obj) for name, obj, _ in locks}
        return [
            finding(
                "threading",
                f"{name} (a {kinds[name]}) was held at the fork by a thread that is not in "
                "the child: there nothing ever releases it, and acquiring it waits for ever",
                integration=None,
                track=THREADING_TRACK,
                what=name,
                source="trial",
            )
            for name in names
        ]

    return Step("trying the program's locks", None, THREADING_TRACK, "them", run, judge)


def _import_step() -> Step | None:
    module = next((m for m in _TRIAL_IMPORTS if m not in sys.modules), None)
    if module is None:
        return None

    def run(capture: int) -> None:
        __import__(module)

    return Step(f"importing {module}", "threading", None, "", run, _nothing)


# -- random generators --------------------------------------------------------


def _draw_step(label: str, draw: Callable[[], list[float]], found: bool, random_on: bool) -> Step:
    # The integration covers every generator doctor finds: when it is on and
    # a stream still repeats, something in the child sets it again.
    integration = None if random_on else "random"
    track = RANDOM_TRACK if found and not random_on else None
    note = "the random integration is on: a fork callback sets the same state again?"

    def judge(values: list[list[float]]) -> list[Finding]:
        if len(values) < 2 or any(v != values[0] for v in values):
            return []
        return [
            finding(
                "random",
                f"two trial children drew the same numbers from {label}: every forked child "
                "repeats its siblings' draws",
                integration=integration,
                track=track,
                what=label,
                note=note if random_on else "",
                source="trial",
            )
        ]

    return Step(
        f"drawing random numbers from {label}",
        integration,
        track,
        label,
        lambda capture: draw(),
        judge,
    )


def _draw(rng: Any, kind: str) -> Callable[[], list[float]]:
    """Three draws from ``rng`` (the :mod:`random` module's own instance, or
    a generator found): not for secrets, two children drawing the same
    numbers is the finding."""
    if kind == "random":
        return lambda: [rng.random() for _ in range(3)]
    if kind == "RandomState":
        return lambda: [float(x) for x in rng.random_sample(3)]
    return lambda: [float(x) for x in rng.random(3)]


# -- the plan -------------------------------------------------------------------


def plan(found: Inspection, random_on: bool) -> list[Step]:
    """The steps of every trial child, for the process ``found`` describes."""
    steps = []
    seen: set[int] = set()
    for name in ("stdout", "stderr", "__stdout__", "__stderr__"):
        stream = getattr(sys, name)
        if stream is not None and id(stream) not in seen and _fd(stream) in (1, 2):
            seen.add(id(stream))
            steps.append(_flush_step(name))
    steps += [_handler_step(handler, loggers) for handler, loggers in found.handlers]
    steps.append(
        Step("printing to sys.stdout", "stdio", None, "", _print, _nothing),
    )
    imports = _import_step()
    if imports is not None:
        steps.append(imports)
    if found.locks:
        steps.append(_locks_step(found.locks))
    steps.append(_draw_step("random", _draw(random, "random"), False, random_on))
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        steps.append(
            _draw_step(
                "numpy.random",
                lambda: [float(x) for x in numpy.random.random(3)],
                False,
                random_on,
            )
        )
    steps += [
        _draw_step(label, _draw(rng, kind), True, random_on)
        for label, rng, kind in found.generators
    ]
    return steps


# -- the children -----------------------------------------------------------------


def _child(steps: list[Step], skip: frozenset[int], progress: int, capture: int) -> dict[int, Any]:
    """A trial child: every step but those in ``skip``, in order."""
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    done: dict[int, Any] = {}
    for index, step in enumerate(steps):
        if index in skip:
            continue
        os.write(progress, _NUMBER.pack(index))
        try:
            done[index] = (True, step.run(capture))
        except Exception as error:  # noqa: BLE001  (what failed in the child is the finding)
            done[index] = (False, f"{type(error).__name__}: {error}")
    os.write(progress, _NUMBER.pack(_DONE))
    # run_in_child flushes these once the result is sent: a stream whose
    # lock a thread of the parent held would hang it past the last step.
    sys.stdout = sys.stderr = None
    return done


def _last_step(fd: int) -> int | None:
    """The last number a dead child wrote to the progress pipe."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    whole = len(data) - len(data) % _NUMBER.size
    return _NUMBER.unpack_from(data, whole - _NUMBER.size)[0] if whole else None


class Trial(NamedTuple):
    findings: list[Finding]
    #: How many trial children were started.
    children: int
    #: The steps no child reached (after a hang before them, or a failure).
    untried: list[str]


def trial(steps: list[Step], timeout: float) -> Trial:
    """Fork trial children until two have done every step that did not
    hang, or :data:`MAX_HANGS` have hung, or one failed."""
    hung: dict[int, str] = {}
    results: list[dict[int, Any]] = []
    findings: list[Finding] = []
    children = 0
    while len(results) < 2 and len(hung) < MAX_HANGS:
        progress_r, progress_w = os.pipe()
        capture = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115  (closed below)
        children += 1
        try:
            results.append(
                run_in_child(
                    _child, steps, frozenset(hung), progress_w, capture.fileno(), timeout=timeout
                )
            )
        except Exception as error:  # noqa: BLE001  (what failed in the child is the finding)
            os.close(progress_w)
            progress_w = -1
            last = _last_step(progress_r)
            if not isinstance(error, ChildTimeoutError):
                during = f" {steps[last].what}" if last is not None and last != _DONE else ""
                findings.append(
                    finding(
                        "failed",
                        f"a trial child failed{during}: {type(error).__name__}: {error}",
                        integration=None,
                        source="trial",
                    )
                )
                break
            if last is not None and last != _DONE:
                hung[last] = error.stack
                step = steps[last]
                findings.append(
                    finding(
                        "hang",
                        f"a trial child hung for {timeout:g} s {step.what}; its stack is in "
                        "the report",
                        integration=step.integration,
                        track=step.track,
                        what=step.target,
                        source="trial",
                        stack=error.stack,
                    )
                )
                continue
            where = (
                "after its last step, on its way out"
                if last == _DONE
                else "before its first step (in a fork callback, or in an integration's "
                "child phase)"
            )
            findings.append(
                finding(
                    "hang",
                    f"a trial child hung for {timeout:g} s {where}; its stack is in the report",
                    integration=None,
                    source="trial",
                    stack=error.stack,
                )
            )
            break
        finally:
            for fd in (progress_r, progress_w):
                if fd >= 0:
                    os.close(fd)
            capture.close()
    for index, step in enumerate(steps):
        values = [r[index] for r in results if index in r]
        for ok, value in values:
            if not ok:
                findings.append(
                    finding(
                        "failed",
                        f"a trial child raised {value} {step.what}",
                        integration=step.integration,
                        track=step.track,
                        what=step.target,
                        source="trial",
                    )
                )
                break
        findings += step.judge([value for ok, value in values if ok])
    untried = [
        step.what
        for index, step in enumerate(steps)
        if index not in hung and not any(index in r for r in results)
    ]
    return Trial(findings, children, untried)
