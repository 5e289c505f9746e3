"""Tiling speed: our flow's steady state and fixed cost against a naive loop and the JPEG codec ceiling.

Run it from the repository root::

    .venv/bin/python benchmarks/tiling.py            # 8 slides of 40,960² px (~6,300 tiles each)
    .venv/bin/python benchmarks/tiling.py --quick    # 8 slides of 4,096² px: a smoke test

It builds a large slide from the tissue of ``tests/data/slides/CMU-1-Small-Region.svs``,
upscaled 2× to 0.25 µm/px, mirrored and repeated, as a tiled JPEG TIFF with levels
4× apart like a 40× Aperio SVS (levels 2× apart would hold a 0.5 µm/px level that
needs no resampling, which TCGA slides lack), cached in ``--workdir``, and a folder of
``--count`` hard links to it. Then it prints one markdown table of tiles/s and peak RSS for:

- the flow end to end on all the copies, ``python -m flows.tile_tcga --workers 2``
  as a subprocess, against an already running Prefect server and with its own
  temporary one. Its **steady state** is the tiles of the slides that finished
  after the first ``workers`` of them, over the time from the ``workers``-th
  finish to the last (finish: the mtime of the slide's ``zarr.json``, written
  just before it is published). Counting from the very first finish would add
  the slides the other workers had nearly done by then, and overstate the rate
  by up to (workers - 1) / count. Its **fixed cost** is start-up (launch to
  the first slide's start: its finish less the ``seconds`` it records) plus
  exit (the last finish to the process's exit); peak RSS is summed over its process
  tree (Prefect's temporary server and the Dask workers included);
- a naive single-process loop over the same tiles: per-tile OpenSlide
  ``read_region`` → RGB → resize → JPEG encode (PIL), no tissue detection or QC;
- the codec ceiling: the time to decode the source JPEG pixels one output tile
  covers ((tile edge in level-0 px / 256)² source tiles of 256 px) plus encoding
  the output tile as the store does, on one core, times the number of cores. No
  tiler that decodes and re-encodes JPEG beats it; resampling, QC and writes come on top.

Issue 13's goals: steady state ≥ 6× the naive loop and ≥ 60 % of the codec ceiling, fixed
cost ≤ 5 s against a running server. How the flow's memory behaves with the number of slides
is ``benchmarks/scale_tiling.py``'s job. Numbers are noisy on a busy machine: the load average
is printed with them, and the ratios are taken within one run.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Iterator
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

from flows.prefect_api import TemporaryPrefectServer

if TYPE_CHECKING:
    import pyvips

    from storage.jpeg_codec import JpegCodec

# This file is benchmarks/tiling.py: its folder comes first on sys.path, so ``import tiling`` would
# import this script rather than the package. It reads slides and stores with the libraries only.
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"
LEVEL0_MPP_UM = 0.25
LEVEL_STEP = 4  # downsample between pyramid levels, as in Aperio SVS
TISSUE_ORIGIN = (0.55, 0.6)  # where in the sample the mosaic starts: inside the tissue, for small slides
TISSUE_COLUMNS = (0.40, 0.85)  # the sample's tissue band; the glass on either side is left out of the mosaic
SOURCE_TILE_PX = 256
SOURCE_JPEG_QUALITY = 85
WORKERS = 2
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


# --- building the slides -----------------------------------------------------------------------


def _tissue_levels(size: int) -> list[pyvips.Image]:
    """The sample's tissue at 0.25 µm/px, mirrored 2×2 and repeated to ``size`` px, per pyramid level.

    Each level repeats a shrunk copy of the 2×2 block rather than shrinking the
    full mosaic, which pyvips would recompute for every strip written.
    """
    import pyvips  # only needed to build slides; keeps the measuring child processes lean

    with openslide.OpenSlide(SAMPLE) as sample:
        width, height = sample.dimensions
        rgb = np.asarray(sample.read_region((0, 0), 0, (width, height)).convert("RGB"))
    left, right = (round(f * width) for f in TISSUE_COLUMNS)
    rgb = rgb[:, left:right]
    rgb = rgb[: rgb.shape[0] // 32 * 32, : rgb.shape[1] // 32 * 32]  # so the block shrinks by 4³ exactly
    tissue = pyvips.Image.new_from_array(rgb).resize(2)
    block = pyvips.Image.arrayjoin([tissue, tissue.fliphor(), tissue.flipver(), tissue.rot180()], across=2)
    block = block.copy_memory()
    shrinks, edge = 0, size
    while edge > 1024:
        edge, shrinks = edge // LEVEL_STEP, shrinks + 1
    # Every level's crop starts at level 0's origin divided by its downsample, exactly: rounding the origin per
    # level put level 1 one level-0 px off in x and y, which registration benchmarks read as a 0.35 µm error.
    step = LEVEL_STEP**shrinks
    x0, y0 = (round(f * extent / 2 / step) * step for f, extent in zip(TISSUE_ORIGIN, (block.width, block.height)))
    levels, edge = [], size
    while True:
        copies = (math.ceil((x0 + edge) / block.width), math.ceil((y0 + edge) / block.height))
        levels.append(block.replicate(*copies).crop(x0, y0, edge, edge))
        if edge <= 1024:
            return levels
        edge, x0, y0 = edge // LEVEL_STEP, x0 // LEVEL_STEP, y0 // LEVEL_STEP
        block = block.shrink(LEVEL_STEP, LEVEL_STEP).copy_memory()


def _tiles_of(image: pyvips.Image) -> Iterator[np.ndarray]:
    """Yield ``image``'s 256-px tiles in TIFF order, rendering one strip of rows at a time."""
    for y in range(0, image.height, SOURCE_TILE_PX):
        strip = image.crop(0, y, image.width, min(SOURCE_TILE_PX, image.height - y)).numpy()
        for x in range(0, image.width, SOURCE_TILE_PX):
            yield strip[:, x : x + SOURCE_TILE_PX]


def build_slide(path: Path, size: int) -> Path:
    """Write (once) a ``size``² px tiled JPEG TIFF at 0.25 µm/px, YCbCr 4:2:0 like scanner output."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with tifffile.TiffWriter(partial) as tiff:
        for index, level in enumerate(_tissue_levels(size)):
            pixels_per_cm = 1e4 / (LEVEL0_MPP_UM * LEVEL_STEP**index)
            tiff.write(
                _tiles_of(level),
                shape=(level.height, level.width, 3),
                dtype=np.uint8,
                tile=(SOURCE_TILE_PX, SOURCE_TILE_PX),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": SOURCE_JPEG_QUALITY},
                resolution=(pixels_per_cm, pixels_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=int(index > 0),
                metadata=None,
            )
    with openslide.OpenSlide(partial) as slide:
        mpp = float(slide.properties.get("openslide.mpp-x", "nan"))
    if not math.isclose(mpp, LEVEL0_MPP_UM, rel_tol=1e-3):
        raise RuntimeError(f"{partial}: OpenSlide reads {mpp} µm/px, expected {LEVEL0_MPP_UM}")
    partial.rename(path)
    return path


def link_copies(slide: Path, folder: Path, count: int) -> Path:
    """A folder of ``count`` hard links to ``slide``, each its own slide id."""
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for index in range(count):
        os.link(slide, folder / f"slide-{index:04d}.tif")
    return folder


# --- measuring ---------------------------------------------------------------------------------


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


# --- the run -----------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=int,
        default=40960,
        help="level-0 edge of the large slide, px (40,960: ~6,300 tiles, TCGA's mean is ~7,000)",
    )
    parser.add_argument("--count", type=int, default=8, help="copies of the large slide in one run (≥ 8 for the goal)")
    parser.add_argument("--naive-tiles", type=int, default=500, help="tiles timed in the naive loop")
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".work", help="slides and stores")
    parser.add_argument("--quick", action="store_true", help="small slides: a smoke test, not a measurement")
    args = parser.parse_args()
    if args.quick:
        args.size, args.naive_tiles = 4096, 50
    return args


def _ratio_rows(flows: list[Measure], naive: Measure, ceiling: Measure) -> list[str]:
    rows = []
    for flow in flows:
        which = flow.label.split(", ")[-1]
        rows.append(
            f"| steady state, {which} / naive loop | | | {flow.tiles_per_s / naive.tiles_per_s:.2f}× | | goal ≥ 6× |"
        )
        rows.append(
            f"| steady state, {which} / codec ceiling | | | {flow.tiles_per_s / ceiling.tiles_per_s:.1%} | "
            "| goal ≥ 60 % |"
        )
        goal = "goal ≤ 5 s" if "running" in which else "goal ≤ 5 s applies to a running server"
        rows.append(f"| fixed cost, {which} | | {flow.fixed_s:.1f} | | | {goal} |")
    return rows


def measure_run(slide: Path, copies: Path, stores: Path, naive_tiles: int, cores: int) -> tuple[str, list[str]]:
    """Flow runs on the copies, naive loop and codec ceiling on one of them: a description and the table rows."""
    server = TemporaryPrefectServer()
    try:
        flows = [run_flow(copies, stores / "run-server.zarr", WORKERS, server.wait_until_ready())]
    finally:
        server.stop()
    flows.append(run_flow(copies, stores / "run-temporary.zarr", WORKERS))
    slide_store = next((stores / "run-server.zarr" / "slides").iterdir())
    group = zarr.open_group(slide_store, mode="r")
    coords, tiles = group["coords"][:], group["tiles"]
    size_level0 = round(group.attrs["resolution"]["tile_size_level0"])
    timed = coords[:naive_tiles]
    naive_s, naive_rss = in_fresh_process(naive_loop, slide, timed, size_level0, tiles.shape[1], tiles.serializer)
    note = "all tiles" if len(timed) == len(coords) else f"first {len(timed):,} of {len(coords):,}, rate extrapolated"
    naive = Measure("naive loop, 1 process", len(timed), naive_s, len(timed) / naive_s, naive_rss, note)
    ceiling = codec_ceiling(slide, coords, size_level0, tiles[:CODEC_SAMPLE_TILES], tiles.serializer, cores)
    rows = [flow.row() for flow in flows] + [naive.row(), ceiling.row()] + _ratio_rows(flows, naive, ceiling)
    described = (
        f"{len(coords):,} tiles of {tiles.shape[1]} px ({size_level0} level-0 px) a slide, "
        f"JPEG q{tiles.serializer.quality} {':'.join(tiles.serializer.subsampling)}"
    )
    return described, rows


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    args = _parse_args()
    started = time.perf_counter()
    cores = os.cpu_count() or 1
    stores = args.workdir / "stores"
    stores.mkdir(parents=True, exist_ok=True)
    large = build_slide(args.workdir / f"large-{args.size}" / "slide.tif", args.size)
    copies = link_copies(large, args.workdir / f"large-{args.size}-x{args.count}", args.count)
    load_before = _load()
    described, rows = measure_run(large, copies, stores, args.naive_tiles, cores)
    print(
        f"\n{args.count} slides of {args.size:,}² px at {LEVEL0_MPP_UM} µm/px, levels {LEVEL_STEP}× apart, "
        f"{described}. {cores} cores. Load average before {load_before}, after {_load()}. "
        f"Benchmark took {time.perf_counter() - started:.0f} s.\n"
    )
    print("| measure | tiles | seconds | tiles/s | peak RSS (MiB) | notes |\n|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
