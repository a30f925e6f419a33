"""Run a real fork deadlock twice, without and with atfork, and tell what
happened.

A thread is writing a log record to a pipe whose reader is slow (the pipe is
full, so the write blocks while holding the stream's lock) when the main
thread forks; the child then logs one line. Each run happens in a fresh
interpreter, and its child has a deadline: a child that hangs is killed,
and its stack shows where it hung. Without atfork the child hangs; with
atfork's logging and stdio integrations it logs at once.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from typing import Any

from atfork._timeout import MAX_TIMEOUT, seconds
from atfork.testing import run_python

__all__ = ["HELP", "add_arguments", "run"]

HELP = "show a real fork deadlock, without and with atfork (a few seconds)"

ENABLE = 'atfork.integrations.enable("logging", "stdio")'

# Runs in a fresh interpreter; prints one JSON line and ends with os._exit
# (at a normal exit, logging.shutdown() would wait for the stuck thread).
_SCENARIO = """\
import json, logging, os, select, threading, time
import atfork.integrations
from atfork.testing import ChildTimeoutError, run_in_child

if {with_atfork!r}:
    {enable}

read_end, write_end = os.pipe()
log = logging.getLogger("demo")
log.propagate = False
log.addHandler(logging.StreamHandler(open(write_end, "w")))

# A thread logs a record bigger than the pipe holds: it blocks in the write.
threading.Thread(target=log.warning, args=("x" * 200_000,), daemon=True).start()
while select.select([], [write_end], [], 0)[1]:
    time.sleep(0.005)
time.sleep(0.1)

# The slow reader empties the pipe from the fork on (started earlier, it
# could let the thread finish its write before the fork).
def read():
    while True:
        os.read(read_end, 65536)
os.register_at_fork(after_in_parent=lambda: threading.Thread(target=read, daemon=True).start())

def child():
    start = time.monotonic()
    log.warning("hello from the child")
    return time.monotonic() - start

try:
    result = dict(seconds=run_in_child(child, timeout={timeout!r}))
except ChildTimeoutError as exc:
    result = dict(stack=exc.stack)
os.write(1, json.dumps(result).encode())
os._exit(0)
"""

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<name>\S+)', re.M)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=3.0,
        metavar="SECONDS",
        help="how long the child without atfork gets before it counts as hung (3)",
    )


def _scenario(with_atfork: bool, timeout: float) -> dict[str, Any]:
    """Run the scenario once; its result, or an ``error`` describing a run
    that went wrong."""
    source = _SCENARIO.format(with_atfork=with_atfork, enable=ENABLE, timeout=timeout)
    # A minute more for the interpreter than for its child, within MAX_TIMEOUT.
    done = run_python(source, timeout=min(timeout + 60, MAX_TIMEOUT))
    if done.timed_out:
        return {"error": f"the run did not finish; its stack:\n{done.stack}"}
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        return {"error": f"the run failed (exit code {done.returncode}):\n{done.stderr}"}
    return result


def _where(stack: str) -> list[str]:
    """The frames of the hung child's stack, innermost first, one line
    each, down to the child's own function."""
    frames = []
    for m in _FRAME.finditer(stack):
        frames.append(f"{m['name']} ({m['file']}, line {m['line']})")
        if m["name"] == "child":
            break
    return frames


def _describe(number: int, title: str, result: dict[str, Any], timeout: float) -> bool:
    """Print one run's outcome; True if the child finished."""
    print(f"{number}. {title}:")
    if "error" in result:
        print(f"   {result['error']}")
        return False
    if "stack" in result:
        print(f"   the child HUNG, and was killed after {timeout:g} s. Where it hung:")
        for frame in _where(result["stack"]):
            print(f"     in {frame}")
        return False
    print(f"   the child logged its line in {result['seconds'] * 1000:.1f} ms and exited.")
    return True


def run(args: argparse.Namespace) -> int:
    timeout: float = args.timeout
    print("atfork demo: one fork deadlock, without and with atfork\n")
    print(textwrap.indent(__doc__.split("\n\n")[1].strip(), "  "), end="\n\n", flush=True)
    plain = _describe(1, "plain os.fork()", _scenario(False, timeout), timeout)
    sys.stdout.flush()
    # With atfork the child needs milliseconds: a generous deadline.
    fixed = _describe(2, f"with {ENABLE}", _scenario(True, 30.0), 30.0)
    print()
    if not fixed:
        print("atfork did NOT fix this fork: please report it, with the output above.")
        return 1
    if plain:
        print("Without atfork the child happened not to hang this time; with atfork it is safe.")
    else:
        print("atfork works: the fork that hangs without it completes with it.")
    return 0
