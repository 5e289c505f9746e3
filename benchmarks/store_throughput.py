"""Tiles per second of tiling the shipped CMU slide into a store, and of reading them back (issue 16).

Run it with ``PYTHONPATH`` at the checkout to measure, e.g. before and after a change, in the same minute:

    PYTHONPATH=. python -m benchmarks.store_throughput --repeats 3   # -m: benchmarks/tiling.py would shadow tiling

Tiling: :func:`tiling.tile_slide.tile_slide` of the 50-tile CMU sample (its QC picture included), best of
``--repeats``. Reading: every tile decoded through :class:`storage.read.TileReader` (``reader[:]``) and through
:func:`storage.read.open_tiles` (``.values``), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from storage.read import TileReader, open_tiles
from storage.tile_store import TileStore
from tiling.config import TilingConfig
from tiling.slide_list import SlideSpec
from tiling.tile_slide import tile_slide

SLIDE = Path(__file__).resolve().parent.parent / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    config = TilingConfig(tiles_per_shard=16)
    tiling, reading, dataset = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(repeats):
            store = TileStore.create_or_open(Path(folder) / f"t{repeat}.zarr", config.model_dump())
            started = time.perf_counter()
            record = tile_slide(SlideSpec(SLIDE, "cmu"), store, config)
            tiling.append(record.n_tiles / (time.perf_counter() - started))
            started = time.perf_counter()
            n = len(
                TileReader(store)[:]
                if hasattr(TileReader, "tile_coords")
                else [TileReader(store)[i] for i in range(len(TileReader(store)))]
            )
            reading.append(n / (time.perf_counter() - started))
            started = time.perf_counter()
            n = len(open_tiles(store).tiles.values)
            dataset.append(n / (time.perf_counter() - started))
    print(f"load {os.getloadavg()[0]:.1f}")
    print(f"| measure | tiles/s (best of {repeats}) |")
    print("|---|---|")
    print(f"| tiling CMU-1-Small-Region (50 tiles) | {max(tiling):.0f} |")
    print(f"| reading all tiles, TileReader | {max(reading):.0f} |")
    print(f"| reading all tiles, open_tiles(...).tiles.values | {max(dataset):.0f} |")


if __name__ == "__main__":
    main()
