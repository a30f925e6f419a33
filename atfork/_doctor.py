"""Import a program and tell what would break when it forks:
``python -m atfork doctor [--json] [--timeout SECONDS] (-m MODULE | [--]
SCRIPT) [ARGS...]``.

The program is imported as ``python`` would run it, with its own
``sys.argv`` (``[SCRIPT, *ARGS]``, or ``[the module's file, *ARGS]`` for
``-m``), but as a module named ``__atfork_doctor__``: its ``if __name__ ==
"__main__":`` block does not run. Doctor then lists its atfork hooks in fork
order, the integrations and the threads, looks at the process (importing
nothing the program did not) and forks trial children, each under the
``--timeout`` deadline (killed, with its stack reported, if it hangs).
Every finding says what fixes it, an integration or a ``track()`` call, and
is made only where that integration is off or the object is not covered:

* other threads alive (``threading``);
* ``sys.stdout`` or ``sys.stderr`` block-buffered while they are, and output
  the parent had buffered that a trial child writes again (``stdio``);
* every handler of every logger: one that writes to a buffered stream while
  other threads are alive, hands its records to a QueueListener thread or
  holds buffered records; in the trial children a record through each
  handler writing to the standard streams, the stream lock of every other
  one, and every lock a handler keeps (``logging``);
* open connections the db integration knows how to quarantine: sqlite3,
  psycopg2, psycopg, psycopg_pool, PyMySQL, redis-py outside its pools,
  SQLAlchemy engines (``db``, or ``db.track()``);
* HTTP connections kept alive in the pools of urllib3 (and so of requests
  and botocore) and httpcore (httpx's ``Client`` and ``AsyncClient``), with
  an open socket (``http``, or ``http.track()``);
* ThreadPoolExecutors with workers (``threading``), and locks in module
  globals that a trial child finds held (``threading.track()``);
* random generators that two trial children draw the same numbers from
  (``random``, or ``random.track()``);
* a trial child that hangs in any step, and which step.

Then, in a section of their own, the fork risks atfork cannot fix (see
:func:`atfork.fork_risks`): other threads, gRPC, native thread pools, CUDA,
gevent, a running asyncio loop. They do not change the exit status: no
integration answers them, and the program may deal with them before it
forks.

The report ends with what doctor cannot see ("Not checked"): what runs under
``if __name__ == "__main__":`` or later, threads started by C code and
C-level state, and the timing of a real fork.

With ``--json`` the report is the only thing on stdout: from the start,
descriptor 1 points at stderr, where the program's output goes (the trial
children write to files of their own), and the report is written to the
original stdout. Once the report is written doctor ends at once
(``os._exit``), after flushing the standard streams for at most a second:
the program's threads, atexit functions and finalizers do not run, so none
can keep doctor from ending.

Exit status: 0 no finding, 1 findings, 2 a bad command line, 3 the program
did not import (it raised, or called ``sys.exit()``, while imported: the
report says which, with the exception or the exit status).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import threading
import traceback
import warnings
from typing import Any

import atfork
from atfork import _run, integrations
from atfork._inspection import describe, inspect
from atfork._registry import _PHASES
from atfork._risks import fork_risks
from atfork._run import TARGET_USAGE, Program, add_target, execute, target
from atfork._timeout import check_timeout, seconds
from atfork._trial import plan, trial

__all__ = [
    "EXIT_CLEAN",
    "EXIT_FINDINGS",
    "EXIT_NOT_IMPORTED",
    "HELP",
    "RUN_NAME",
    "add_arguments",
    "diagnose",
    "not_imported",
    "render",
    "run",
]

HELP = "import a program, list its fork hooks and threads, and try two forks"

#: The name the program runs as: not ``__main__``, so its main block does not run.
RUN_NAME = "__atfork_doctor__"

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
#: The program raised, or called ``sys.exit()``, while it was imported.
EXIT_NOT_IMPORTED = 3

EPILOG = (
    "exit status: 0 no finding, 1 findings, 2 a bad command line, 3 the program did not "
    "import (it raised, or called sys.exit(), while imported)"
)


def _phases(hook: atfork.Hook) -> list[str]:
    return [name for name, call in zip(_PHASES, hook._calls) if call is not None]


def _integrations() -> dict[str, Any]:
    states: dict[str, Any] = {}
    for name in integrations.available():
        try:
            states[name] = integrations.get(name).is_enabled()
        except Exception as error:  # noqa: BLE001  (a broken plug-in is a finding)
            states[name] = f"error: {error}"
    return states


def _program(program: Program | None, argv: list[str]) -> dict[str, Any] | None:
    if program is None:
        return None
    return {
        "name": program.name,
        "module": program.module,
        "argv": argv,
        "run_name": RUN_NAME,
        "imported": True,
        "error": None,
    }


def _not_checked(program: Program | None, foreign: int | None) -> list[str]:
    """What doctor cannot see, for this process."""
    block = (
        f'code under `if __name__ == "__main__":` (the program ran as {RUN_NAME}, so that '
        "block did not run), and "
        if program is not None
        else ""
    )
    threads = (
        f"{foreign} thread(s) of this process started outside Python's threading (by C "
        "code: BLAS pools, gRPC, ...): doctor does not know them or what they hold"
        if foreign
        else "threads started by C code, which Python's threading does not know"
    )
    return [
        f"{block}whatever runs later: threads, connections, logging handlers, locks and "
        "generators made after the import, and the forks themselves (a server's workers)",
        threads,
        "C-level state beyond the fork risks above: locks, thread pools and connections "
        "inside C extensions and libraries (libpq's own, say)",
        "the timing of a real fork: whether a thread is in the middle of a write, a record or "
        "a locked section then; the trial forks see a few instants, the inspection findings "
        "tell the risk",
        "objects doctor cannot find: locks outside module globals (in instances, closures), "
        "connections of drivers the db integration does not know, urllib3 connections "
        "checked out of their pool (a streamed response not read to its end), HTTP clients "
        "other than urllib3's and httpcore's (aiohttp, http.client), other kinds of random "
        "generators (torch)",
    ]


def diagnose(
    timeout: float = 10.0,
    *,
    program: Program | None = None,
    namespace: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Describe this process's fork handling, look at it, and try forks.

    :param timeout: the deadline of each trial child, in seconds (at most
        :data:`atfork.testing.MAX_TIMEOUT`).
    :param program: the program that was imported, for the report.
    :param namespace: its namespace, if it ran in one of its own (runpy's):
        its objects are found there, and named after it.
    :returns: a report as plain data (see :func:`render`).
    :raises ValueError: ``timeout`` is not a valid deadline (before any fork:
        a bad deadline is not a finding about the program).
    """
    check_timeout(timeout)
    states = _integrations()
    label = ""
    if program is not None:
        label = (
            program.name if program.module else os.path.splitext(os.path.basename(program.name))[0]
        )
    found = inspect(states, (label, namespace) if namespace is not None else None)
    risks = [risk._asdict() for risk in fork_risks()]  # before the trial forks
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "program": _program(program, list(sys.argv)),
        "hooks": [
            {"name": h.name, "priority": h.priority, "where": h.where, "phases": _phases(h)}
            for h in atfork.hooks()
        ],
        "integrations": states,
        "threads": [
            {"name": t.name, "daemon": t.daemon, "main": t is threading.main_thread()}
            for t in threading.enumerate()
        ],
        "foreign_threads": found.foreign_threads,
    }
    steps = plan(found, states.get("random") is True)
    tried = trial(steps, timeout)
    findings = found.findings + tried.findings
    report["findings"] = findings
    report["risks"] = risks
    report["trial"] = {
        "children": tried.children,
        "steps": [step.what for step in steps],
        "untried": tried.untried,
    }
    report["not_checked"] = _not_checked(program, found.foreign_threads)
    report["ok"] = not findings
    report["exit_status"] = EXIT_FINDINGS if findings else EXIT_CLEAN
    return report


# -- a program that did not import --------------------------------------------


# The modules whose frames come before the program's in its traceback.
_RUNNERS = frozenset({__name__, _run.__name__, "runpy"})


def _program_traceback(error: BaseException) -> tuple[str, str | None]:
    """The traceback of ``error`` from the program's first frame on (doctor's
    and runpy's frames left out), and the file that frame ran (what the
    program saw as ``sys.argv[0]``; None if the program never ran: a syntax
    error, say)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in _RUNNERS:
        tb = tb.tb_next
    first = tb.tb_frame.f_globals if tb is not None else {}
    ran = first.get("__file__") if first.get("__name__") == RUN_NAME else None
    return "".join(traceback.format_exception(type(error), error, tb)), ran


def not_imported(program: Program, error: BaseException) -> dict[str, Any]:
    """The report on a program that raised or exited while imported."""
    if isinstance(error, SystemExit):
        code = error.code
        status = 0 if code is None else code if isinstance(code, int) else 1
        summary = (
            f"it called sys.exit({'' if code is None else repr(code)}), exit status {status}, "
            "while imported; doctor imports a program without running its "
            '`if __name__ == "__main__":` block, where the code that runs it belongs'
        )
        failure = {
            "type": "SystemExit",
            "message": "" if code is None or isinstance(code, int) else str(code),
            "exit_status": status,
        }
    else:
        summary = f"it raised {describe(error)}: {error}"
        failure = {"type": describe(error), "message": str(error), "exit_status": None}
    text, ran = _program_traceback(error)
    argv = list(sys.argv)
    if program.module and ran is not None:
        argv[0] = ran  # runpy put the module's name back
    described = _program(program, argv)
    assert described is not None
    described["imported"] = False
    described["error"] = {
        **failure,
        "summary": f"the program did not import: {summary}",
        "traceback": text,
    }
    return {
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "program": described,
        "findings": [],
        "risks": [],
        "ok": False,
        "exit_status": EXIT_NOT_IMPORTED,
    }


# -- the report, for a person ---------------------------------------------------


# The trial steps a person is shown; --json lists them all.
_SHOWN_STEPS = 12


def _near(where: str) -> str:
    """``file:line``, the file relative to the current directory if inside it."""
    path, _, line = where.rpartition(":")
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return f"{path if relative.startswith('..') else relative}:{line}"


def _wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(
        text, 100, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False
    )


def _enabling(names: list[str]) -> list[str]:
    joined = ",".join(names)
    quoted = ", ".join(map(repr, names)).replace("'", '"')
    return _wrap(
        f"To enable {joined}: ATFORK_INTEGRATIONS={joined} in the environment (read at "
        f"start-up, also by gunicorn's and celery's workers), python -m atfork run --enable "
        f"{joined} ..., or atfork.integrations.enable({quoted}) before the program forks.",
        "",
        "",
    )


def render(report: dict[str, Any]) -> str:
    """The report of :func:`diagnose` (or of a program that did not import),
    for a person."""
    lines = [f"atfork doctor: Python {report['python']}, process {report['pid']}"]
    program = report.get("program")
    if program is not None:
        shown = " ".join(
            [
                f"-m {program['name']}" if program["module"] else program["name"],
                *program["argv"][1:],
            ]
        )
        lines.append(f"Program: {shown} (imported as {program['run_name']})")
        if program["error"] is not None:
            lines += ["", *_wrap(program["error"]["summary"], "", ""), ""]
            lines += ["    " + line for line in program["error"]["traceback"].splitlines()]
            return "\n".join(lines) + "\n"
    lines.append("")
    hooks = report["hooks"]
    lines.append(f"Hooks ({len(hooks)}), in parent/child order (prepare runs in reverse):")
    for hook in hooks:
        lines.append(
            f"  {hook['priority']:>6}  {hook['name']}  [{', '.join(hook['phases'])}]  "
            f"{_near(hook['where'])}"
        )
    if not hooks:
        lines.append("  (none)")
    lines.append("")
    lines.append("Integrations:")
    for name, state in report["integrations"].items():
        shown = state if isinstance(state, str) else ("enabled" if state else "off")
        lines.append(f"  {name:<12} {shown}")
    lines.append("")
    threads = report["threads"]
    lines.append(f"Threads alive ({len(threads)}):")
    for thread in threads:
        tags = ", ".join(
            t for t, on in (("main", thread["main"]), ("daemon", thread["daemon"])) if on
        )
        lines.append(f"  {thread['name']}" + (f" ({tags})" if tags else ""))
    lines.append("")
    trial = report["trial"]
    steps = trial["steps"]
    lines.append(f"Trial forks ({trial['children']} children), each child:")
    lines += [f"  {step}" for step in steps[:_SHOWN_STEPS]]
    if len(steps) > _SHOWN_STEPS:
        lines.append(f"  ... and {len(steps) - _SHOWN_STEPS} more (see --json)")
    if trial["untried"]:
        lines += _wrap(f"Not reached, after the hangs: {'; '.join(trial['untried'])}.", "", "")
    lines.append("")
    findings = report["findings"]
    if findings:
        lines.append(f"Findings ({len(findings)}), each with what fixes it:")
        for number, found in enumerate(findings, 1):
            tag = found["integration"] or found["check"]
            lines += _wrap(f"[{tag}] {found['problem']}", f"  {number}. ", "     ")
            lines += _wrap(f"fix: {found['fix']}", "     ", "       ")
            if found.get("stack"):
                lines.append("     stack:")
                lines += ["       " + line for line in found["stack"].splitlines()]
        names = sorted({f["integration"] for f in findings if f["integration"]})
        if names:
            lines += ["", *_enabling(names)]
    else:
        lines.append("No findings: nothing doctor looks at would break at a fork.")
    lines.append("")
    risks = report["risks"]
    if risks:
        lines.append(f"Fork risks atfork cannot fix ({len(risks)}), each with what to do:")
        for number, risk in enumerate(risks, 1):
            lines += _wrap(f"[{risk['kind']}] {risk['what']}", f"  {number}. ", "     ")
            lines += _wrap(f"advice: {risk['advice']}", "     ", "       ")
    else:
        lines.append("No fork risks that atfork cannot fix.")
    lines.append("")
    lines.append("Not checked:")
    for item in report["not_checked"]:
        lines += _wrap(item, "  - ", "    ")
    return "\n".join(lines) + "\n"


# -- the command ----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = f"%(prog)s [--json] [--timeout SECONDS] {TARGET_USAGE}"
    parser.epilog = EPILOG
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON, and nothing else, on stdout (the program's output "
        "goes to stderr)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long a trial child may take before it counts as hung (10)",
    )
    add_target(parser, "doctor")


def _write(fd: int, text: str) -> None:
    data = text.encode(getattr(sys.stdout, "encoding", None) or "utf-8", "backslashreplace")
    while data:
        data = data[os.write(fd, data) :]


def _flush_standard_streams(within: float = 1.0) -> None:
    """Flush ``sys.stdout`` and ``sys.stderr``, in a thread: a thread of the
    program blocked on a stream's lock must not hang doctor."""

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # closed, or not a stream
                stream.flush()

    flusher = threading.Thread(target=flush, name="atfork-doctor-flush", daemon=True)
    flusher.start()
    flusher.join(within)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    program = target(parser, args)
    # Doctor's own trial forks, with the program's threads alive: the report
    # is about those threads already (3.12+ warns at each such fork).
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"atfork\.testing")
    out = 1
    if args.json:
        # Whatever the program and its threads print goes to stderr, at the
        # level of the descriptor: print(), os.write(1, ...) and C code alike.
        out = os.dup(1)
        os.dup2(2, 1)
    try:
        namespace = execute(program, RUN_NAME)
    except (Exception, SystemExit) as error:  # noqa: BLE001  (the report is about it)
        report = not_imported(program, error)
    else:
        report = diagnose(args.timeout, program=program, namespace=namespace)
    text = json.dumps(report, indent=2) + "\n" if args.json else render(report)
    _flush_standard_streams()  # the program's output first, in the order written
    _write(out, text)
    # The program's non-daemon threads, atexit functions, or a stream whose
    # lock one of its threads holds, could keep the interpreter from exiting.
    os._exit(report["exit_status"])
