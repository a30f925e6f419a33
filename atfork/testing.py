"""Helpers for fork tests that cannot hang a test suite.

:func:`run_in_child` runs a callable in a forked child and gives its result,
or its exception, back to the parent; :func:`run_python` runs source code in
a fresh interpreter. Both wait with a deadline: a child still running at the
deadline has its stack dumped (by :mod:`faulthandler`) and is killed.

Every ``timeout`` is a number of seconds, positive and at most
:data:`MAX_TIMEOUT` (one week, below the limit of every system call the
helpers wait in); any other value (infinity and NaN included) raises
``ValueError``, and a value that is not a number ``TypeError``, before
anything starts. Whatever raises in the parent once a child exists (an
error, ``KeyboardInterrupt``), the helper kills and reaps that child (for
:func:`run_python`, the interpreter's process group) before the exception
goes on.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, TypeVar

from atfork import _timeout
from atfork._report import REPORT_PREFIX, unraisable_args
from atfork._timeout import check_timeout

__all__ = [
    "MAX_TIMEOUT",
    "ChildCallbackError",
    "ChildError",
    "ChildTimeoutError",
    "PythonRun",
    "run_in_child",
    "run_python",
    "wait_child",
]

#: The longest ``timeout`` the helpers accept, in seconds: one week.
MAX_TIMEOUT = _timeout.MAX_TIMEOUT

T = TypeVar("T")

#: The signal that makes a hung child dump its stack before it is killed.
DUMP_SIGNAL = signal.SIGUSR2

_LENGTH = struct.Struct("!Q")


class ChildError(RuntimeError):
    """The child died without a result, or its exception could not be sent.

    .. versionadded:: 0.1
    """

    __module__ = "atfork.testing"


class ChildTimeoutError(TimeoutError):
    """The child did not finish by its deadline and was killed.

    ``stack`` holds the stack of every thread of the child at the deadline,
    as :mod:`faulthandler` wrote it (empty if it could not write it).

    .. versionadded:: 0.1
    """

    __module__ = "atfork.testing"

    def __init__(self, message: str, stack: str) -> None:
        super().__init__(f"{message}\n{stack}" if stack else message)
        self.stack = stack


class ChildCallbackError(Exception):
    """An atfork callback raised in a child of :func:`run_in_child`.

    The child reports the error through its ``sys.unraisablehook``, which the
    parent cannot see; :func:`run_in_child` reports it again in the parent,
    as this exception, whose message holds the child's traceback.

    .. versionadded:: 0.1
    """

    __module__ = "atfork.testing"


class _RemoteTraceback(Exception):
    """Carries the child's formatted traceback as the ``__cause__`` of the
    exception re-raised in the parent."""

    def __str__(self) -> str:
        return f"\n\nin the child:\n{self.args[0]}"


def _read_stack(fd: int, quiet: float = 0.3, limit: float = 3.0) -> str:
    """Read what a dumping child writes until it has been quiet a while."""
    chunks = []
    end = time.monotonic() + limit
    while time.monotonic() < end and select.select([fd], [], [], quiet)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _wait(pid: int, deadline: float) -> int | None:
    """The child's wait status, or None if it still runs at ``deadline``."""
    delay = 0.0005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# How long a killed child may take to be reaped. SIGKILL cannot be ignored,
# but a waitpid() that learns of exits from a SIGCHLD handler (gevent's,
# monkey-patched) never reports a child whose signal came before the handler
# was installed: such a child is left unreaped rather than waited for ever.
_REAP_GRACE = 5.0


def _kill(pid: int, stack_fd: int | None) -> str:
    """Dump the stack of child ``pid`` (if it can), then kill and reap it
    (give up on reaping it after :data:`_REAP_GRACE` seconds)."""
    stack = ""
    try:
        if stack_fd is not None:
            os.kill(pid, DUMP_SIGNAL)
            stack = _read_stack(stack_fd)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it finished meanwhile
        pass
    _wait(pid, time.monotonic() + _REAP_GRACE)
    return stack


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def wait_child(pid: int, *, timeout: float = 30.0) -> int:
    """Wait for child ``pid`` with a deadline; return its exit code.

    The exit code is negative for a child killed by a signal, as
    :func:`os.waitstatus_to_exitcode` gives it.

    :param pid: the process id :func:`os.fork` returned, a positive int (0
        and below, which :func:`os.waitpid` takes for "any child" or a
        process group, would reap a child that is not the one meant).
    :raises TypeError: ``pid`` is not an int (a bool is not one here).
    :raises ValueError: ``pid`` is 0 or below.
    :raises ChildProcessError: ``pid`` is not a child of this process.
    :raises ChildTimeoutError: the child was still running at the deadline;
        it was killed (and reaped, unless :func:`os.waitpid` had not
        reported its end a few seconds later: see below).

    Any other exception while it waits (``KeyboardInterrupt``, say) kills
    and reaps the child too, unless ``pid`` is not a child of this process.

    It waits through :func:`os.waitpid` as the program has it. Under
    gevent's monkey-patching that is gevent's, which learns of a child's end
    from its SIGCHLD handler, installed with its first child watcher, after
    the first fork: a child that ended before then is never reported, looks
    alive until the deadline, and is left unreaped after the kill (a gevent
    program that calls ``gevent.get_hub().loop.install_sigchld()`` before it
    first forks has no such child).

    .. versionadded:: 0.1
    """
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    if pid <= 0:
        raise ValueError(f"pid must be a positive process id, not {pid}")
    deadline = time.monotonic() + check_timeout(timeout)
    try:
        status = _wait(pid, deadline)
    except ChildProcessError:  # not our child: not ours to kill either
        raise
    except BaseException:
        _kill(pid, None)
        raise
    if status is None:
        _kill(pid, None)
        raise ChildTimeoutError(
            f"the child (pid {pid}) was still running after {timeout:g} s and was killed", ""
        )
    return os.waitstatus_to_exitcode(status)


class _ChildReports:
    """One ``sys.unraisablehook``, installed while any :func:`run_in_child`
    forks, that keeps the atfork callback errors of a child, to send them to
    the parent; every other report goes on to the hook installed before.

    Calls from several threads share it (each installing a hook of its own
    would file one child's errors under another call, and could leave a
    stale hook behind): a child's errors go to the list of the thread that
    forked it, the only thread a child has.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._pid = 0
        self._lists: dict[int, list[tuple[str, str, str]]] = {}
        self.previous: Any = None

    def start(self) -> list[tuple[str, str, str]]:
        """Catch the reports of this thread's next child, in the list returned."""
        reports: list[tuple[str, str, str]] = []
        with self._lock:
            if not self._users:
                self._pid = os.getpid()
                self.previous = sys.unraisablehook
                sys.unraisablehook = self._keep
            self._users += 1
            self._lists[threading.get_ident()] = reports
        return reports

    def stop(self) -> None:
        """In the parent, once the fork returned."""
        with self._lock:
            self._lists.pop(threading.get_ident(), None)
            self._users -= 1
            if not self._users and sys.unraisablehook == self._keep:
                sys.unraisablehook = self.previous

    def _keep(self, args: Any) -> None:
        reports = self._lists.get(threading.get_ident())
        if (
            reports is not None
            and os.getpid() != self._pid
            and str(args.err_msg).startswith(REPORT_PREFIX)
        ):
            text = "".join(
                traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
            )
            # The hook is the object up to 3.13, part of err_msg from 3.14 on.
            hook = "" if args.object is None else f"{args.object!r} "
            reports.append((args.err_msg, hook, text))
        else:
            self.previous(args)


_child_reports = _ChildReports()


def _report_again(err_msg: str, hook: str, text: str) -> None:
    """Report in the parent an atfork callback error of the child."""
    error = ChildCallbackError(f"{hook}raised in the child:\n{text}")
    sys.unraisablehook(unraisable_args(error, err_msg, None))


def _child_main(
    result_fd: int, func: Callable[..., Any], args: tuple[Any, ...], reports: list[Any]
) -> None:
    try:
        try:
            payload: tuple[Any, ...] = (True, func(*args), "", reports)
        except BaseException as exc:  # noqa: BLE001  (sent to the parent)
            payload = (False, exc, traceback.format_exc(), reports)
        try:
            data = pickle.dumps(payload)
        except Exception:  # noqa: BLE001
            text = payload[2] if not payload[0] else traceback.format_exc()
            error = ChildError(f"could not send the child's result:\n{text}")
            data = pickle.dumps((False, error, "", reports))
        data = _LENGTH.pack(len(data)) + data
        while data:
            data = data[os.write(result_fd, data) :]
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream has nothing to flush
                stream.flush()
    finally:
        os._exit(0)  # pragma: no cover  (coverage is shut down by os._exit)


def _children() -> set[int] | None:
    """The children of the calling thread (Linux), or None if unknown."""
    path = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/children"
    try:
        with open(path) as file:
            return {int(pid) for pid in file.read().split()}
    except (OSError, ValueError):
        return None


def _fork() -> int:
    """:func:`os.fork`, also when it raises in the parent after the child
    exists.

    From CPython 3.15 on, the ``DeprecationWarning`` of a fork with threads
    alive propagates under an ``error`` filter (gh-135427): ``os.fork()``
    raises it in the parent, with the child running and every callback of
    that fork already called. The child is then found among the children
    of this thread, and the helper goes on as if the fork had returned (the
    warning is what such tests are about); only if it cannot be found is the
    warning raised.
    """
    before = _children()
    try:
        return os.fork()
    except Warning:
        after = _children()
        new = after - before if after is not None and before is not None else set()
        if len(new) != 1:
            raise
        return new.pop()


def _read_result(fd: int, deadline: float) -> bytes | None:
    """The child's framed result, or None on EOF or at the deadline."""
    buffer = b""
    size: int | None = None
    while size is None or len(buffer) < size:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buffer += chunk
        if size is None and len(buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer)
            buffer = buffer[_LENGTH.size :]
    return buffer


def run_in_child(func: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
    """Call ``func(*args)`` in a forked child and return its result.

    The result travels back pickled; an exception raised in the child is
    raised again in the parent, with the child's traceback as its cause,
    except ``SystemExit`` (``sys.exit()`` in the child): raised again, it
    would end the calling program, so it becomes a :class:`ChildError`
    naming the exit code, with the ``SystemExit`` (and its ``code``) as its
    cause. The atfork callbacks run as with any ``os.fork()``; an exception
    raised by one in the child is reported again in the parent through
    ``sys.unraisablehook``, as a :class:`ChildCallbackError`.

    :param timeout: seconds the child may take, fork callbacks included.
    :raises ChildTimeoutError: the child was still running at the deadline;
        it was killed and its stack is in the error.
    :raises ChildError: the child died without sending a result, or raised
        ``SystemExit``.

    Until the fork returns, :data:`DUMP_SIGNAL` is routed to
    :mod:`faulthandler` in the parent as well. The ``DeprecationWarning``
    that CPython 3.12+ emits when a process with threads forks is left as
    it is (changing the warning filters around the fork is not thread-safe);
    where it propagates from ``os.fork()`` after the child exists (3.15+,
    under an ``error`` filter), the helper still waits for that child and
    gives its result.

    .. versionadded:: 0.1
    """
    timeout = check_timeout(timeout)
    result_r, result_w = os.pipe()
    stack_r, stack_w = os.pipe()
    pid = -1
    unreaped = 0  # the child's pid from the fork until it is reaped
    global _child_reports
    catcher = _child_reports
    reports = catcher.start()
    try:
        # Registered in the parent so that the child inherits it from its
        # first instruction on, even a child hanging in a fork callback.
        faulthandler.register(DUMP_SIGNAL, file=stack_w, all_threads=True)
        try:
            pid = _fork()
            if pid == 0:  # pragma: no cover  (coverage is shut down by os._exit)
                try:
                    # This thread is the child's only one: what the others
                    # of the parent held (the catcher's lock) is not here.
                    sys.unraisablehook = catcher.previous
                    _child_reports = _ChildReports()
                    os.close(result_r)
                    os.close(stack_r)
                    _child_main(result_w, func, args, reports)
                finally:
                    os._exit(1)  # the child never returns into the caller's code
            unreaped = pid
        finally:
            if pid:
                faulthandler.unregister(DUMP_SIGNAL)
                catcher.stop()
        os.close(result_w)
        os.close(stack_w)
        result_w = stack_w = -1
        deadline = time.monotonic() + timeout
        data = _read_result(result_r, deadline)
        status = _wait(pid, deadline)
        if status is None:
            stack = _kill(pid, stack_r)
            unreaped = 0
            raise ChildTimeoutError(
                f"the child (pid {pid}) was still running after {timeout:g} s and was "
                f"killed; its stack:",
                stack,
            )
        unreaped = 0
    finally:
        if unreaped:  # something raised in the parent while the child ran
            _kill(unreaped, None)
        for fd in (result_r, result_w, stack_r, stack_w):
            if fd >= 0:
                os.close(fd)
    if data is None:
        raise ChildError(f"the child (pid {pid}) {_describe_status(status)} without a result")
    payload = pickle.loads(data)  # noqa: S301  (our own child wrote it)
    for err_msg, hook, text in payload[3]:
        _report_again(f"{err_msg} (in child {pid})", hook, text)
    if payload[0]:
        return payload[1]  # type: ignore[no-any-return]
    exc: BaseException = payload[1]
    if payload[2]:
        exc.__cause__ = _RemoteTraceback(payload[2])
    if isinstance(exc, SystemExit):
        raise ChildError(
            f"the child (pid {pid}) raised SystemExit({exc.code!r}) instead of returning"
        ) from exc
    raise exc


class PythonRun(NamedTuple):
    """What :func:`run_python` saw.

    .. versionadded:: 0.1
    """

    #: The exit code, or None if the interpreter was killed at its deadline.
    returncode: int | None
    stdout: str
    stderr: str
    #: The stack of every thread at the deadline (the end of ``stderr``),
    #: if it timed out.
    stack: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


_STACK_DUMP = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-f]+", re.MULTILINE)

# The file name of run_python's source in its tracebacks and stacks.
_SOURCE_NAME = "<run_python>"

# The program given to ``python -c``; the source follows it as sys.argv[1].
# The source is compiled apart, so that nothing is put before its first line
# (a __future__ import or a docstring must come first, and the line numbers
# stay its own), and runs in __main__'s namespace, where the loader leaves
# none of its names. Any Python 3 runs it (``executable`` may be another one).
_LOADER = """\
def _atfork_run_python():
    import faulthandler, signal, sys
    del globals()["_atfork_run_python"]
    faulthandler.register(signal.{signal}, all_threads=True)
    source = sys.argv.pop(1)
    # 3.13+ show -c's source in tracebacks (linecache is loaded at start-up):
    # they show this source too. Older versions do not import it for this.
    linecache = sys.modules.get("linecache")
    if linecache is not None:
        linecache.cache[{name!r}] = (len(source), None, source.splitlines(True), {name!r})
    return compile(source, {name!r}, "exec", dont_inherit=True)
exec(_atfork_run_python())
"""


def run_python(
    source: str,
    *,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    executable: str | os.PathLike[str] | None = None,
) -> PythonRun:
    """Run ``source`` in a fresh interpreter with a deadline.

    ``source`` runs as with ``python -c``: as ``__main__``, with
    ``sys.argv == ["-c"]``; it may begin with any statement, a docstring or
    a ``__future__`` import. Its tracebacks and stacks name it
    ``"<run_python>"``, with its own line numbers, below one frame of the
    ``-c`` loader that runs it. That loader lets the interpreter dump its
    stack: at the deadline it is dumped, and the interpreter killed, with
    every process it started (it runs in a process group of its own).
    Children still holding its output at the deadline after it exited are
    killed too.

    :param source: Python source code, a str.
    :param env: variables added to (a copy of) this process's environment,
        a mapping of str to str. ``PYTHONUNBUFFERED`` is removed unless
        ``env`` sets it: it makes stdout unbuffered and so hides the stream
        failures after fork.
    :param executable: the interpreter; :data:`sys.executable` by default.
    :returns: a :class:`PythonRun`; a run that timed out does not raise.
    :raises TypeError: an argument has the wrong type (before anything
        starts).

    .. versionadded:: 0.1
    """
    timeout = check_timeout(timeout)
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, not {type(source).__name__}")
    if env is not None:
        if not isinstance(env, Mapping):
            raise TypeError(f"env must be a mapping, not {type(env).__name__}")
        for key, value in env.items():
            if not (isinstance(key, str) and isinstance(value, str)):
                raise TypeError(f"env must map str to str, not {key!r}: {value!r}")
    if executable is not None and not isinstance(executable, (str, os.PathLike)):
        raise TypeError(f"executable must be a path, not {type(executable).__name__}")
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    environ.update(env or {})
    loader = _LOADER.format(signal=DUMP_SIGNAL.name, name=_SOURCE_NAME)
    process = subprocess.Popen(
        [executable or sys.executable, "-c", loader, source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
        # Its own process group: children it forked, which may hold its
        # output pipes open, are killed with it.
        start_new_session=True,
    )
    try:
        return _communicate(process, timeout)
    except BaseException:  # an error or Ctrl-C in the parent: nothing may outlive it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        raise


def _communicate(process: subprocess.Popen[bytes], timeout: float) -> PythonRun:
    """What ``process`` wrote and its exit code; at the deadline, its stack,
    and its process group killed."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = process.poll() is None  # else only its children still hold the pipes
        if hung:
            process.send_signal(DUMP_SIGNAL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=1.0)  # a moment to write the stacks
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        if hung:
            text = stderr.decode("utf-8", "replace")
            dump = _STACK_DUMP.search(text)
            stack = text[dump.start() :] if dump else ""
            return PythonRun(None, stdout.decode("utf-8", "replace"), text, stack)
    return PythonRun(
        process.returncode,
        stdout.decode("utf-8", "replace"),
        stderr.decode("utf-8", "replace"),
        "",
    )
