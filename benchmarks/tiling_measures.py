"""What ``benchmarks/tiling.py`` measures: the flow's steady state and fixed cost, a naive loop, the codec ceiling."""

from __future__ import annotations

import contextlib
import io
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import imagecodecs
import numpy as np
import openslide
import psutil
import tifffile
import zarr
from PIL import Image
from tiling_slides import REPO, SOURCE_TILE_PX

if TYPE_CHECKING:
    from storage.jpeg_codec import JpegCodec

CODEC_SAMPLE_TILES = 500  # output tiles (and their source tiles) timed for the codec ceiling
PIL_SUBSAMPLING = {"444": 0, "422": 1, "420": 2}
RSS_POLL_S = 0.1
FLOW_SUMMARY = re.compile(r"tiles written (\d+) in ([\d.]+) s")
MIB = 1 << 20


@dataclass(frozen=True)
class Measure:
    """One row of the table; ``None`` cells are left blank."""

    label: str
    tiles: int | None
    seconds: float | None
    tiles_per_s: float
    peak_rss_bytes: int | None
    note: str = ""
    fixed_s: float | None = None  # start-up and exit of a flow run

    def row(self) -> str:
        cells = [
            self.label,
            "" if self.tiles is None else f"{self.tiles:,}",
            "" if self.seconds is None else f"{self.seconds:.1f}",
            f"{self.tiles_per_s:,.0f}",
            "" if self.peak_rss_bytes is None else f"{self.peak_rss_bytes / MIB:,.0f}",
            self.note,
        ]
        return "| " + " | ".join(cells) + " |"


def _tree_rss(root: psutil.Process) -> int:
    """RSS of a process and all its descendants; pages shared between processes count in each."""
    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += process.memory_info().rss
    return total


def finish_times(store: Path) -> list[tuple[float, int, float]]:
    """``(finish time, tiles, seconds)`` of every slide in ``store``, by finish (mtime of its ``zarr.json``)."""
    finished = []
    for folder in (store / "slides").iterdir():
        if (folder / "zarr.json").is_file():
            attributes = zarr.open_group(folder, mode="r").attrs
            finished.append(
                ((folder / "zarr.json").stat().st_mtime, int(attributes["n_tiles"]), float(attributes["seconds"]))
            )
    return sorted(finished)


def steady_rate(finished: list[tuple[float, int, float]], workers: int) -> float:
    """Tiles/s of the slides finished after the first ``workers``, from the ``workers``-th finish to the last."""
    if len(finished) <= workers:
        raise ValueError(f"a steady state needs more than {workers} slides, got {len(finished)}")
    span = finished[-1][0] - finished[workers - 1][0]
    return sum(tiles for _, tiles, _ in finished[workers:]) / span


def run_flow(slides: Path, store: Path, workers: int, api_url: str | None = None) -> Measure:
    """Run the tiling command on a fresh store, timing it from launch to exit.

    Without ``api_url`` the command starts its own temporary Prefect server (counted);
    with it, it uses that already running server (not counted), as a deployment would.
    The row's rate is the steady state; the note gives the whole command's rate and the fixed cost.
    """
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
        str(workers),
        "--no-progress",
    ]
    log = store.with_suffix(".log")
    peak = 0
    launched_at, started = time.time(), time.perf_counter()
    with log.open("w") as output:
        env = {**os.environ, **({"PREFECT_API_URL": api_url} if api_url else {})}
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            peak = max(peak, _tree_rss(root))
            time.sleep(RSS_POLL_S)
    seconds, exited_at = time.perf_counter() - started, time.time()
    summary = FLOW_SUMMARY.search(log.read_text())
    if process.returncode != 0 or summary is None:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}; see {log}")
    finished = finish_times(store)
    tiles = sum(count for _, count, _ in finished)
    steady = steady_rate(finished, workers)
    start_up = min(finish - slide_seconds for finish, _, slide_seconds in finished) - launched_at
    exit_s = exited_at - finished[-1][0]
    note = (
        f"whole command {tiles / seconds:,.0f} tiles/s; fixed cost {start_up + exit_s:.1f} s: start-up "
        f"(launch to first slide started) {start_up:.1f} s, exit (last slide finished to exit) {exit_s:.1f} s"
    )
    fixed = start_up + exit_s
    server = "running Prefect server (not counted)" if api_url else "temporary Prefect server"
    label = f"flow steady state, {len(finished)} slides, `--workers {workers}`, {server}"
    return Measure(label, tiles, seconds, steady, peak, note, fixed_s=fixed)


def _own_peak_rss() -> int:
    """Peak RSS (VmHWM) of this process; ``ru_maxrss`` would include the parent's, kept across exec."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024


def naive_loop(
    slide: Path, coords: np.ndarray, size_level0: int, tile_size_px: int, codec: JpegCodec
) -> tuple[float, int]:
    """Per-tile ``read_region`` → RGB → box resize → JPEG, as a first script would; seconds and peak RSS."""
    with openslide.OpenSlide(slide) as source:
        started = time.perf_counter()
        for x, y in coords.tolist():
            region = source.read_region((x, y), 0, (size_level0, size_level0)).convert("RGB")
            tile = region.resize((tile_size_px, tile_size_px), Image.BOX)
            tile.save(io.BytesIO(), "JPEG", quality=codec.quality, subsampling=PIL_SUBSAMPLING[codec.subsampling])
        return time.perf_counter() - started, _own_peak_rss()


def in_fresh_process(function: Callable, *args: object) -> object:
    """Run ``function`` in a new interpreter, so its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _source_tile_indices(coords: np.ndarray, size_level0: int, tiles_across: int, limit: int) -> list[int]:
    """Level-0 TIFF tiles under the first output tiles, up to ``limit``: the pixels the flow decodes."""
    chosen: set[int] = set()
    for x, y in coords.tolist():
        for row in range(y // SOURCE_TILE_PX, (y + size_level0 - 1) // SOURCE_TILE_PX + 1):
            for col in range(x // SOURCE_TILE_PX, (x + size_level0 - 1) // SOURCE_TILE_PX + 1):
                chosen.add(row * tiles_across + col)
        if len(chosen) >= limit:
            break
    return sorted(chosen)


def _best_seconds(work: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of a few passes: the ceiling is what the codec can do, not what a busy machine let it."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    return min(timings)


def codec_ceiling(
    slide: Path, coords: np.ndarray, size_level0: int, tiles: np.ndarray, codec: JpegCodec, cores: int
) -> Measure:
    """Decode + encode cost of one output tile on one core, scaled to ``cores``."""
    with tifffile.TiffFile(slide) as tiff:
        page = tiff.pages.first
        tiles_across = math.ceil(page.imagewidth / page.tilewidth)
        encoded = []
        for index in _source_tile_indices(coords, size_level0, tiles_across, CODEC_SAMPLE_TILES):
            tiff.filehandle.seek(page.dataoffsets[index])
            encoded.append(tiff.filehandle.read(page.databytecounts[index]))
    decode_s = _best_seconds(lambda: [imagecodecs.jpeg8_decode(data) for data in encoded]) / len(encoded)
    encode_s = _best_seconds(
        lambda: [imagecodecs.jpeg8_encode(t, level=codec.quality, subsampling=codec.subsampling) for t in tiles]
    ) / len(tiles)
    sources_per_tile = (size_level0 / SOURCE_TILE_PX) ** 2
    per_tile_s = sources_per_tile * decode_s + encode_s
    note = (
        f"decode {decode_s * 1e3:.2f} ms × {sources_per_tile:.2f} source tiles + encode "
        f"{encode_s * 1e3:.2f} ms = {1 / per_tile_s:,.0f} tiles/s per core, × {cores}"
    )
    return Measure(f"codec ceiling, {cores} cores", None, None, cores / per_tile_s, None, note)
