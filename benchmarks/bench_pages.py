"""What the child's page faults are: pages written, or pages first read.

In the service process of ``bench_service.py``, the child reads which pages
of its writable mappings it holds exclusively (``/proc/self/pagemap``, bit
56, Linux 4.2+) just before atfork's first child callback and just after its
last: a page shared with the parent becomes the child's own when the child
writes it (the kernel copies it, one fault). A page the parent writes
becomes the child's own too, so the parent's first callback waits for the
child's report, and the child starts once the parent sleeps in that wait.
The child's faults in between are then split into:

* pages written, by where they lie: ``objects`` (anonymous memory:
  CPython's object arenas, so reference counts and fields of Python
  objects), ``malloc`` (the ``[heap]``: dict tables, buffers, larger
  objects), ``static`` (the writable data of CPython and of extension
  modules: static type objects, module state), ``stack``;
* ``new``: pages of memory the callbacks mapped (new arenas, a grown heap);
* ``rest``: faults that wrote none of those pages, mostly code and
  read-only data the child is the first to run or read after the fork
  (the kernel copies no page table of a file mapping at fork).

The ``import`` mode has no callback of an integration: its figures are what
the measurement itself costs. Needs what ``bench_service.py`` needs, and
Linux. Run ``python benchmarks/bench_pages.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import statistics
import sys
import tempfile
import time
from typing import Any

from bench_service import INTEGRATIONS, set_up
from fork_latency import DEADLINE, Case, medians, reap

MODES = ("import", *INTEGRATIONS, "all+tracked")
COLUMNS = ("faults", "objects", "malloc", "static", "stack", "new", "rest")
_EXCLUSIVE = 1 << 56
_PRESENT = 1 << 63
_ENTRY = 8  # bytes per page in /proc/self/pagemap
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _writable_maps() -> list[tuple[int, int, str]]:
    """The writable mappings of this process: start, end, and a region name."""
    maps = []
    with open("/proc/self/maps") as lines:
        for line in lines:
            fields = line.split()
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            path = fields[5] if len(fields) > 5 else ""
            if "w" not in fields[1] or path in ("[vvar]", "[vsyscall]"):
                continue
            if path == "" or path.startswith("[anon"):
                region = "objects"
            else:
                region = {"[heap]": "malloc", "[stack]": "stack"}.get(path, "static")
            maps.append((start, end, region))
    return maps


class _Plan:
    """Where one pagemap reading of the current mappings goes: a buffer
    made in the parent, and a slice of it per mapping, so that the child
    reads with next to no allocation of its own."""

    def __init__(self, maps: list[tuple[int, int, str]], buffer: bytearray) -> None:
        view = memoryview(buffer)
        self.reads: list[tuple[int, tuple[memoryview]]] = []
        offset = 0
        for start, end, _ in maps:
            size = (end - start) // _PAGE * _ENTRY
            self.reads.append((start // _PAGE * _ENTRY, (view[offset : offset + size],)))
            offset += size

    def read(self) -> None:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            for position, buffers in self.reads:
                os.preadv(fd, buffers, position)
        finally:
            os.close(fd)


def _own(entry: int) -> bool:
    return entry & (_EXCLUSIVE | _PRESENT) == _EXCLUSIVE | _PRESENT


def _count(
    maps: list[tuple[int, int, str]], before: _Plan, after: _Plan, skip: list[range]
) -> dict[str, int]:
    """The pages each region's mappings held exclusively after and not before."""
    counts = dict.fromkeys(COLUMNS[1:-1], 0)
    for (start, _, region), (_, (old,)), (_, (new,)) in zip(maps, before.reads, after.reads):
        first = start // _PAGE
        for index, (was, now) in enumerate(zip(old.cast("Q"), new.cast("Q"))):
            if _own(now) and not _own(was) and not any(first + index in r for r in skip):
                counts[region] += 1
    known = [range(start // _PAGE, end // _PAGE) for start, end, _ in maps] + skip
    with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
        for start, end, _ in _writable_maps():
            pages = range(start // _PAGE, end // _PAGE)
            pagemap.seek(pages.start * _ENTRY)
            entries = memoryview(pagemap.read(len(pages) * _ENTRY)).cast("Q")
            for page, entry in zip(pages, entries):
                if entry & _PRESENT and not any(page in r for r in known):
                    counts["new"] += 1
    return counts


def _until_asleep(pid: int) -> None:
    """Wait until process ``pid`` sleeps (blocked in a read)."""
    deadline = time.monotonic() + DEADLINE
    with open(f"/proc/{pid}/stat", "rb", buffering=0) as stat:
        while stat.read().rsplit(b")", 1)[1].split()[0] != b"S":
            if time.monotonic() > deadline:
                raise RuntimeError(f"process {pid} never waited")
            stat.seek(0)


def _range_of(buffer: bytearray) -> range:
    import ctypes

    start = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer)) // _PAGE
    return range(start, start + len(buffer) // _PAGE + 2)


def measure(mode: str, forks: int, tmp: str) -> list[float]:
    """In this interpreter: set up ``mode``, build the service, and return
    the median figures of :data:`COLUMNS` per fork."""
    import atfork

    set_up(mode, tmp)

    fork: dict[str, Any] = {}

    def before_callbacks() -> None:
        # Once the parent waits in its callback (see wait_for_the_child), a
        # page becomes this process's own only when this process writes it.
        if not select.select([fork["parked"][0]], [], [], DEADLINE)[0]:
            raise RuntimeError("the parent never waited")
        _until_asleep(os.getppid())
        # The plans' objects become this process's own now, not when the
        # reading after the callbacks takes a reference to each.
        for plan in (fork["after"], fork["before"]):
            for entry in plan.reads:
                entry[1][0].nbytes  # noqa: B018
        fork["before"].read()
        fork["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def after_callbacks() -> None:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - fork["faults"]
        fork["after"].read()
        counts = _count(fork["maps"], fork["before"], fork["after"], fork["skip"])
        counts["faults"] = faults
        os.write(fork["report"][1], json.dumps(counts).encode())

    def wait_for_the_child() -> None:
        # Its first callback: every page the parent writes after the fork
        # becomes the child's own as well. The child's report, or an end of
        # file if the child died (the parent's write end is closed first).
        os.close(fork["report"][1])
        os.write(fork["parked"][1], b"x")
        fork["answer"] = os.read(fork["report"][0], 65536)

    top, bottom = sys.maxsize, -sys.maxsize
    atfork.atfork(child=before_callbacks, priority=top, name="bench_pages: before")
    atfork.atfork(child=after_callbacks, priority=bottom, name="bench_pages: after")
    atfork.atfork(parent=wait_for_the_child, priority=top, name="bench_pages: wait")

    figures: dict[str, list[int]] = {column: [] for column in COLUMNS}
    buffers: list[bytearray] = []
    while len(figures["faults"]) < forks:
        maps = _writable_maps()
        size = sum((end - start) // _PAGE * _ENTRY for start, end, _ in maps)
        if not buffers or len(buffers[0]) < size:
            buffers = [bytearray(2 * size), bytearray(2 * size)]
            continue  # the buffers are new mappings: look at the maps again
        fork.update(
            maps=maps,
            before=_Plan(maps, buffers[0]),
            after=_Plan(maps, buffers[1]),
            skip=[_range_of(buffer) for buffer in buffers],
            parked=os.pipe(),
            report=os.pipe(),
        )
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        reap(pid)
        for fd in (*fork["parked"], fork["report"][0]):
            os.close(fd)
        if not fork["answer"]:
            raise RuntimeError(f"child {pid} died before it reported")
        counts = json.loads(fork["answer"])
        counts["rest"] = counts["faults"] - sum(counts[column] for column in COLUMNS[1:-1])
        for column in COLUMNS:
            figures[column].append(counts[column])
    return [statistics.median(values) for values in figures.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh interpreters per mode (3)")
    parser.add_argument("--forks", type=int, default=20, help="forks per interpreter (20)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(*measure(args.child[0], int(args.child[1]), args.child[2]))
        return 0
    if not os.path.exists("/proc/self/pagemap"):
        print("bench_pages needs Linux's /proc/self/pagemap", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        cases: list[Case] = [(mode,) for mode in args.modes]
        median = medians(__file__, cases, args.rounds, args.forks, tmp)
    print(
        f"CPython {sys.version.split()[0]}, {args.rounds} interpreters x {args.forks} forks of "
        "the service process, the child's callbacks, per fork, median of per-run medians"
    )
    print(f"{'':<13}{'':>8}{'pages written':^32}")
    print(f"{'mode':<13}" + "".join(f"{column:>8}" for column in COLUMNS))
    for (mode,), figures in median.items():
        print(f"{mode:<13}" + "".join(f"{figure:>8.0f}" for figure in figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
