"""Tiling at production scale: whether the per-slide cost, memory or time to first progress grow with N slides.

Run it from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/scale_tiling.py                      # N = 100, 1,000
    PYTHONPATH=. .venv/bin/python benchmarks/scale_tiling.py --sizes 100 6093     # the user's run
    PYTHONPATH=. .venv/bin/python benchmarks/scale_tiling.py --quick              # N = 10, 40

It writes one small slide (1,024² px of the real CMU sample's tissue at 0.5 µm/px,
16 tiles: the work per slide is small, so the per-slide overhead shows) and a
folder of N hard links to it per size, then runs ``python -m flows.tile_tcga
--workers 2`` on each folder into a fresh store, against one Prefect server
started beforehand (a deployment's situation; the temporary server's own start
is in ``benchmarks/tiling.py``). Per N it prints:

- seconds per slide: the command's wall clock, and the flow's own timer, over N;
- peak RSS of the driver (the command's process, which also hosts the Dask
  scheduler) and of the largest worker process, polled every 0.2 s;
- time to first progress: from launch to the first per-slide log line;
- with ``--rss-at 100 300 1000``: the driver's and the largest worker's RSS
  when the run passes those numbers of slides (progress lines), to tell a
  driver that grows all run long from one that grows at the start only.

Issue 13's goals at 6,093 slides: peak RSS within 10 % of the 100-slide run,
first progress within 10 s. The store open and poll times are
``benchmarks/scale_stores.py``'s.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts named like the packages (tiling.py): drop it from sys.path, put the repository on it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402

import numpy as np  # noqa: E402
import openslide  # noqa: E402
import psutil  # noqa: E402

from flows.prefect_api import TemporaryPrefectServer  # noqa: E402
from tiling.pyramid_tiff import write_pyramid_tiff  # noqa: E402

REPO = _HERE.parent
SAMPLE = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"
CROP_XY = (800, 1400)  # top-left of a 1,024² px tissue region of the sample, level-0 px
CROP_PX = 1024
WORKERS = 2
RSS_POLL_S = 0.2
PROGRESS_LINE = re.compile(r": \d+ tiles in [\d.]+ s")
FLOW_SUMMARY = re.compile(r"tiles written (\d+) in ([\d.]+) s")
MIB = 1 << 20


def build_small_slide(path: Path) -> Path:
    """Write (once) a pyramidal JPEG TIFF of the sample's tissue at 0.499 µm/px, as the scanner recorded it."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with openslide.OpenSlide(SAMPLE) as sample:
        rgb = np.asarray(sample.read_region(CROP_XY, 0, (CROP_PX, CROP_PX)).convert("RGB"))
        mpp_um = float(sample.properties["openslide.mpp-x"])
    partial = write_pyramid_tiff(path.with_suffix(".partial.tif"), rgb, mpp_um)
    partial.rename(path)
    return path


def link_copies(slide: Path, folder: Path, count: int) -> Path:
    """A folder of ``count`` hard links to ``slide``, each its own slide id."""
    if folder.is_dir() and sum(1 for _ in folder.iterdir()) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for index in range(count):
        os.link(slide, folder / f"slide-{index:05d}.tif")
    return folder


@dataclass
class Peaks:
    """Peak RSS of the driver and of its largest descendant, in bytes."""

    driver: int = 0
    worker: int = 0

    def poll(self, driver: psutil.Process) -> None:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            self.driver = max(self.driver, driver.memory_info().rss)
            for child in driver.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    self.worker = max(self.worker, child.memory_info().rss)


@dataclass(frozen=True)
class Checkpoint:
    """RSS (bytes) of the driver and of its largest descendant when ``slides`` slides had been reported."""

    slides: int
    driver: int
    worker: int


def rss_now(driver: psutil.Process) -> Checkpoint:
    """The current (not peak) RSS of the driver and of its largest descendant; ``slides`` left 0."""
    current = Checkpoint(0, 0, 0)
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        workers = [0]
        for child in driver.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                workers.append(child.memory_info().rss)
        current = Checkpoint(0, driver.memory_info().rss, max(workers))
    return current


@dataclass(frozen=True)
class Row:
    slides: int
    wall_s: float
    flow_s: float
    peaks: Peaks
    first_progress_s: float
    checkpoints: list[Checkpoint]


def run(slides: Path, store: Path, api_url: str, rss_at: list[int]) -> Row:
    """``python -m flows.tile_tcga --workers 2`` on ``slides``, timed, its memory and output watched."""
    shutil.rmtree(store, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "flows.tile_tcga",
        "--slides",
        str(slides),
        "--out",
        str(store),
        "--workers",
        str(WORKERS),
        "--no-progress",
    ]
    env = {**os.environ, "PREFECT_API_URL": api_url}
    log = store.with_suffix(".log")
    first_progress: list[float] = []
    reported = [0]  # progress lines read so far, counted by the reader thread
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def read_output() -> None:
        with log.open("w") as output:
            for line in process.stdout:
                if PROGRESS_LINE.search(line):
                    reported[0] += 1
                    if not first_progress:
                        first_progress.append(time.perf_counter() - started)
                output.write(line)

    reader = threading.Thread(target=read_output)
    reader.start()
    peaks, driver = Peaks(), psutil.Process(process.pid)
    marks, checkpoints = sorted(rss_at), []
    while process.poll() is None:
        peaks.poll(driver)
        while marks and reported[0] >= marks[0]:
            checkpoints.append(replace(rss_now(driver), slides=marks.pop(0)))
            point = checkpoints[-1]  # also said at once: a long run stopped early still tells
            print(
                f"[rss] {point.slides} slides: driver {point.driver / MIB:.1f} MiB, "
                f"largest worker {point.worker / MIB:.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(RSS_POLL_S)
    wall = time.perf_counter() - started
    reader.join()
    summary = FLOW_SUMMARY.search(log.read_text())
    if process.returncode != 0 or summary is None or not first_progress:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}; see {log}")
    count = sum(1 for _ in slides.iterdir())
    return Row(count, wall, float(summary[2]), peaks, first_progress[0], checkpoints)


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="numbers of slides, one run each")
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".work", help="slides and stores")
    parser.add_argument("--quick", action="store_true", help="10 and 40 slides: a smoke test")
    parser.add_argument(
        "--rss-at", type=int, nargs="*", default=[], help="slide counts at which to report the current RSS"
    )
    args = parser.parse_args()
    sizes = [10, 40] if args.quick else args.sizes
    slide = build_small_slide(args.workdir / "scale" / "small.tif")
    print(
        f"{CROP_PX:,}² px slides, `--workers {WORKERS}`, a running Prefect server, {os.cpu_count()} cores; "
        f"rows print as each run ends, RSS compared with the first.\n",
        flush=True,
    )
    print(
        "| slides | wall s | wall s / slide | flow s / slide | driver peak RSS MiB | vs first "
        "| largest worker peak RSS MiB | vs first | first progress s | load before → after |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)
    server = TemporaryPrefectServer()
    try:
        api_url = server.wait_until_ready()
        base = None
        checkpoints: list[tuple[int, Checkpoint]] = []
        for count in sizes:
            folder = link_copies(slide, args.workdir / "scale" / f"x{count}", count)
            load_before = _load()
            row = run(folder, args.workdir / "scale" / f"store-x{count}.zarr", api_url, args.rss_at)
            base = base or row
            print(
                f"| {row.slides:,} | {row.wall_s:.1f} | {row.wall_s / row.slides:.3f} "
                f"| {row.flow_s / row.slides:.3f} | {row.peaks.driver / MIB:,.0f} "
                f"| {row.peaks.driver / base.peaks.driver - 1:+.0%} | {row.peaks.worker / MIB:,.0f} "
                f"| {row.peaks.worker / base.peaks.worker - 1:+.0%} | {row.first_progress_s:.1f} "
                f"| {load_before} → {_load()} |",
                flush=True,
            )
            checkpoints.extend((row.slides, point) for point in row.checkpoints)
        if checkpoints:
            print("\n| run of N slides | slides done | driver RSS MiB | largest worker RSS MiB |")
            print("|---:|---:|---:|---:|")
            for slides, point in checkpoints:
                print(f"| {slides:,} | {point.slides:,} | {point.driver / MIB:.1f} | {point.worker / MIB:.1f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
