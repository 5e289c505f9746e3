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
import os
import time
from pathlib import Path

import zarr
from tiling_measures import CODEC_SAMPLE_TILES, Measure, codec_ceiling, in_fresh_process, naive_loop, run_flow
from tiling_slides import LEVEL0_MPP_UM, LEVEL_STEP, REPO, build_slide, link_copies

from flows.prefect_api import TemporaryPrefectServer

# This file is benchmarks/tiling.py: its folder comes first on sys.path, so ``import tiling`` would
# import this script rather than the package. It reads slides and stores with the libraries only
# (the slides: ``tiling_slides.py``; the measures: ``tiling_measures.py``).
WORKERS = 2


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
