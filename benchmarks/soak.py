"""Soak: a busy multi-threaded program forked many times.

In a fresh interpreter, with the given integrations enabled, eight threads
write lines to ``sys.stdout`` (line-buffered, one ``write()`` per line) and
log lines through a ``StreamHandler`` on ``sys.stderr`` without pause, while
the main thread forks; each child writes one line to each stream and ends,
every other one with ``sys.exit()`` and the rest with ``os._exit()`` after
flushing. A child still running after 20 s counts as hung (its stack goes
to the program's stderr, through ``faulthandler``, then it is killed). The
report gives the hung children and, for each stream, the lines lost,
repeated and garbled (a hung child's stack counts as garbled lines of
stderr; ``PYTHONUNBUFFERED`` is removed from the program's environment).
Run ``python benchmarks/soak.py --help``.
"""

from __future__ import annotations

import argparse
import ast
import collections
import os
import subprocess
import sys
import tempfile

PROGRAM = """
import faulthandler, logging, os, signal, sys, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # forks with threads alive
faulthandler.register(signal.SIGUSR1, all_threads=True)
import atfork.integrations

forks, report = int(sys.argv[1]), int(sys.argv[2])
atfork.integrations.enable(*sys.argv[3:])
sys.stdout.reconfigure(line_buffering=True)
log = logging.getLogger("soak")
log.addHandler(logging.StreamHandler())
log.propagate = False
stop = threading.Event()
counts = {}

def chatter(n):
    i = 0
    while not stop.is_set():
        sys.stdout.write(f"p{n}-{i}\\n")
        log.warning("l%d-%d", n, i)
        i += 1
    counts[n] = i

threads = [threading.Thread(target=chatter, args=(n,)) for n in range(8)]
for thread in threads:
    thread.start()
hung = 0
for k in range(forks):
    pid = os.fork()
    if pid == 0:
        sys.stdout.write(f"c-{k}\\n")
        log.warning("cl-%d", k)
        if k % 2:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        sys.exit(0)
    deadline = time.monotonic() + 20
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, signal.SIGUSR1)  # its stack, to stderr
            time.sleep(1)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.0005)  # polling the child's exit
stop.set()
for thread in threads:
    thread.join()
sys.stdout.flush()
os.write(report, repr((hung, counts)).encode())
"""


def check(path: str, prefix: str, child: str, counts: dict[int, int], forks: int) -> str:
    """Lost, repeated and garbled lines of one stream's output."""
    with open(path, encoding="utf-8", errors="replace") as f:
        seen = collections.Counter(f.read().splitlines())
    want = {f"{prefix}{n}-{i}" for n, k in counts.items() for i in range(k)}
    want.update(f"{child}-{k}" for k in range(forks))
    lost = sum(1 for line in want if not seen[line])
    repeated = sum(1 for line in want if seen[line] > 1)
    garbled = sum(1 for line in seen if line not in want)
    return f"{len(want)} lines, {lost} lost, {repeated} repeated, {garbled} garbled"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forks", type=int, default=1000, help="forks (1000)")
    parser.add_argument(
        "integrations",
        nargs="*",
        default=["logging", "stdio", "threading"],
        help="integrations to enable (logging stdio threading)",
    )
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    read, write = os.pipe()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        with open(out, "wb") as out_file, open(err, "wb") as err_file:
            program = subprocess.Popen(
                [sys.executable, "-c", PROGRAM, str(args.forks), str(write), *args.integrations],
                stdout=out_file,
                stderr=err_file,
                pass_fds=(write,),
                env=env,
            )
            os.close(write)
            data = b""
            while chunk := os.read(read, 65536):
                data += chunk
            os.close(read)
            status = program.wait()
        if status or not data:
            with open(err, encoding="utf-8", errors="replace") as f:
                sys.stderr.write(f.read()[-4000:])
            raise SystemExit(f"the program failed with exit status {status}")
        hung, counts = ast.literal_eval(data.decode())
        names = ", ".join(args.integrations) or "none"
        print(f"CPython {sys.version.split()[0]}, {args.forks} forks, 8 busy threads, {names}")
        print(f"hung children: {hung}")
        print(f"stdout: {check(out, 'p', 'c', counts, args.forks)}")
        print(f"stderr: {check(err, 'l', 'cl', counts, args.forks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
