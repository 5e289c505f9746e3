r"""What a command's own process keeps as its run goes on: ``tracemalloc`` snapshots at fixed slide counts.

Run a command in this process, traced from its ``--start``-th published slide
on (so imports and start-up are not traced), with snapshots at the slide
counts of ``--at``; the last snapshot is compared with the first, grouped by
traceback, and the allocations that grew are written to ``--report``::

    PYTHONPATH=. .venv/bin/python benchmarks/trace_driver.py --store S.zarr --start 100 --at 300 800 \
        --report growth.txt -- -m flows.tile_tcga --slides SLIDES --out S.zarr --workers 2 --no-progress

The slide count is the number of entries of ``STORE/slides/``, read every
second by a thread of this process. At each count it also prints where the
process's memory is: RSS, the bytes of live Python allocations, pymalloc's
arenas, and glibc's heap (bytes in use and bytes free but kept). With
``--no-trace`` it prints only those (no ``tracemalloc`` overhead), and at the
last count it also calls ``malloc_trim(0)`` to show how much of the RSS was
free memory glibc had kept. ``benchmarks/scale_tiling.py`` measures the same
command's RSS from outside.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts named like the packages (tiling.py): drop it from sys.path, put the repository on it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import runpy  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

MIB = 1 << 20
FRAMES = 30
TOP = 25


def _published(store: Path) -> int:
    try:
        return sum(1 for name in os.listdir(store / "slides") if name != "zarr.json")
    except FileNotFoundError:
        return 0


def _rss() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def _memory(label: str) -> None:
    """Print where the process's memory is: RSS, Python's live blocks and arenas, glibc's heap in use and free."""
    heap = _LIBC.mallinfo2()
    traced = f", traced {tracemalloc.get_traced_memory()[0] / MIB:.2f} MiB" if tracemalloc.is_tracing() else ""
    arenas = _pymalloc_arenas()
    print(
        f"[trace] {label}: RSS {_rss():.1f} MiB{traced}, Python blocks {sys.getallocatedblocks():,}, "
        f"pymalloc arenas {arenas} ({arenas / 4:.1f} MiB), glibc heap in use {heap.uordblks / MIB:.1f} MiB, "
        f"free but kept {heap.fordblks / MIB:.1f} MiB, mmapped {heap.hblkhd / MIB:.1f} MiB",
        file=sys.stderr,
        flush=True,
    )


def _pymalloc_arenas() -> int:
    """The pymalloc arenas (256 KiB each) now allocated, from ``sys._debugmallocstats`` (written to fd 2)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        for line in capture:
            if line.startswith("# arenas allocated current"):
                return int(line.split("=")[1].replace(",", ""))
    return -1


def _report(first: tracemalloc.Snapshot, last: tracemalloc.Snapshot, counts: tuple[int, int], path: Path) -> None:
    """The allocations alive at the last snapshot that were not at the first, largest growth first."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    first, last = first.filter_traces(ignore), last.filter_traces(ignore)
    slides = counts[1] - counts[0]
    lines = [f"growth between slide {counts[0]} and slide {counts[1]} ({slides} slides)"]
    for key in ("filename", "traceback"):
        stats = last.compare_to(first, key)
        total = sum(stat.size_diff for stat in stats)
        lines.append(f"\n== by {key}: {total / 1024:+,.0f} KiB in all, {total / 1024 / slides:+.2f} KiB a slide ==")
        for stat in stats[:TOP]:
            lines.append(
                f"\n{stat.size_diff / 1024:+,.1f} KiB ({stat.size_diff / slides:+,.0f} B a slide), "
                f"{stat.count_diff:+,} blocks, {stat.size / 1024:,.1f} KiB alive"
            )
            frames = stat.traceback.format(most_recent_first=True) if key == "traceback" else [str(stat.traceback)]
            lines.extend(f"    {frame.strip()}" for frame in frames[: 2 * FRAMES])
    path.write_text("\n".join(lines) + "\n")


def _watch(store: Path, start: int, at: list[int], report: Path | None) -> None:
    """Start tracing at ``start`` slides (unless ``report`` is None), take the memory's state at each of ``at``."""
    snapshots: list[tuple[int, tracemalloc.Snapshot]] = []
    marks = sorted(at)
    started = False
    while marks:
        done = _published(store)
        if not started and done >= start:
            started = True
            if report is not None:
                tracemalloc.start(FRAMES)
            _memory(f"slide {done}, start")
        elif started and done >= marks[0]:
            marks.pop(0)
            _memory(f"slide {done}, before gc.collect()")
            full, counts = gc.get_stats()[2], gc.get_count()
            found = gc.collect()
            print(
                f"[trace] gc.collect() found {found:,} unreachable objects; before it: {full['collections']} full "
                f"collections ({full['collected']:,} objects), generation counts {counts}",
                file=sys.stderr,
                flush=True,
            )
            _memory(f"slide {done}, after gc.collect()")
            if report is not None:
                snapshots.append((done, tracemalloc.take_snapshot()))
            elif not marks:
                _LIBC.malloc_trim(0)
                _memory(f"slide {done}, after malloc_trim(0)")
        time.sleep(1.0)
    if report is None:
        return
    (first_count, first), (last_count, last) = snapshots[0], snapshots[-1]
    tracemalloc.stop()
    _report(first, last, (first_count, last_count), report)
    print(f"[trace] report: {report}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="the command's tile store (its slides are counted)")
    parser.add_argument("--start", type=int, default=100, help="slides published before tracing starts")
    parser.add_argument("--at", type=int, nargs="+", default=[300, 800], help="slide counts of the snapshots")
    parser.add_argument("--report", type=Path, help="where the comparison is written (required unless --no-trace)")
    parser.add_argument("--no-trace", action="store_true", help="no tracemalloc: the memory's state only")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- -m MODULE ARGS...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if len(command) < 2 or command[0] != "-m":
        parser.error("give the command as: -- -m MODULE ARGS...")
    if len(args.at) < 2:
        parser.error("--at needs two slide counts at least")
    if not args.no_trace and args.report is None:
        parser.error("--report is required unless --no-trace")
    report = None if args.no_trace else args.report
    watcher = threading.Thread(target=_watch, args=(args.store.resolve(), args.start, args.at, report), daemon=True)
    watcher.start()
    sys.argv = [command[1], *command[2:]]
    try:
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    finally:
        watcher.join(timeout=0)


if __name__ == "__main__":
    main()
