"""Store scale: opening, listing, polling and preparing stores of up to 6,093 slides (the user's TCGA run).

Run it from the repository root::

    .venv/bin/python benchmarks/scale_stores.py                    # N = 100, 1,000, 6,093 (~10 min on 2 cores)
    .venv/bin/python benchmarks/scale_stores.py --sizes 50 200     # a smoke test
    .venv/bin/python benchmarks/scale_stores.py --qc-only          # the QC page and the manifest only

It grows one tile store slide by slide through the real writer
(:class:`storage.slide_writer.SlideWriter`: staging, shard files, publish and
index entry, then the slide's record and QC picture, as a tiling worker
does), with tiny slides (``--tiles`` tiles of 32 px in shards of
``--shard``, so ~5 units a slide, like the run's ~27,000 shards over 6,093
slides), in ``--workers`` processes publishing at once. At each N it times:

- **open tiles**: :func:`storage.read.open_tiles` (index); the same with
  the index deleted (the readers' fallback walk of every slide group, which
  also writes the index back); and the reader as it was before the index
  (every slide group and array opened by zarr, ``da.from_zarr`` per slide,
  ``da.concatenate``), the baseline, measured in the same run on the same files;
- **units**: :meth:`storage.tile_units.TileSource.units`;
- **prepare**: :meth:`storage.embedding_store.EmbeddingStore.prepare` of a
  fresh embedding store (H0-mini's 1,536 float16), with ``--threads``, and a
  no-op re-preparation;
- **poll**: the embedding flow's progress poll (a count of ``done/``'s
  entries), every unit marked done;
- **open embeddings**: :func:`storage.embedding_store.open_embeddings`;
- **QC page**: :func:`tiling.qc_index.write_qc_index`, which every tiling
  run writes at its end, from the indexes; and its rows as they were read
  before (every record file, every slide group's attributes, a ``stat`` of
  every picture), the baseline;
- **manifest**: :func:`storage.manifest.read_manifest` from the records' copy.

Goals at 6,093 slides (issue 13): opening any store ≤ 2 s, poll ≤ 100 ms,
preparation ≤ 60 s. The machine's load (``os.getloadavg``) is printed with
each row: other processes disturb the timings.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This script's folder holds benchmarks/tiling.py, which would shadow the ``tiling`` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from multiprocessing import get_context  # noqa: E402

import numpy as np  # noqa: E402

TILE_PX = 32
DIM, DTYPE = 1536, "float16"  # H0-mini's cls+mean embedding, as stored


def slide_id(number: int) -> str:
    return f"TCGA-SC-{number:05d}-01Z-00-DX1"  # TCGA-length ids


def publish_slides(root: str, numbers: list[int], n_tiles: int, shard: int) -> None:
    """Publish the slides ``numbers`` through the real writer (one worker process's share)."""
    from storage.manifest import DONE, SlideRecord, write_record
    from storage.slide_writer import SlideWriter
    from storage.tile_store import TileStore, utc_now

    store = TileStore(root)
    tiles = np.full((n_tiles, TILE_PX, TILE_PX, 3), 128, np.uint8)
    coords = np.stack([np.arange(n_tiles), np.zeros(n_tiles)], axis=1).astype(np.int64) * 448
    for number in numbers:
        writer = SlideWriter(
            store,
            slide_id(number),
            capacity=n_tiles,
            tile_size_px=TILE_PX,
            tiles_per_shard=shard,
            jpeg_quality=90,
            jpeg_subsampling="444",
        )
        writer.append(tiles)
        writer.finish(
            coords,
            np.ones(n_tiles, np.float32),
            np.ones((16, 16), bool),
            8.0,
            {"slide_id": slide_id(number), "created_at": utc_now(), "n_rejected": {"blur": 1}},
        )
        store.qc_path(slide_id(number)).write_bytes(b"png")  # only its presence is read
        write_record(store, SlideRecord(slide_id(number), f"/slides/{slide_id(number)}.svs", DONE, n_tiles))


def grow(root: Path, first: int, last: int, n_tiles: int, shard: int, workers: int) -> float:
    """Publish slides ``[first, last)`` from ``workers`` processes at once; return seconds."""
    started = time.perf_counter()
    shares = [list(range(first + w, last, workers)) for w in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for future in [pool.submit(publish_slides, str(root), share, n_tiles, shard) for share in shares]:
            future.result()
    return time.perf_counter() - started


def timed(function, repeat: int = 1) -> tuple[float, object]:
    """Best of ``repeat`` wall-clock seconds, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def open_tiles_per_group(root: Path):
    """The tile reader before the index: every slide group and array opened, one dask graph per slide."""
    import dask.array as da
    import zarr

    from storage.tile_store import TileStore

    tiles, coords = [], []
    for slide in TileStore(root).complete_slide_ids():
        group = zarr.open_group(root / "slides" / slide, mode="r")
        array = group["tiles"]
        tiles.append(da.from_zarr(array, chunks=(array.shards[0], *array.shape[1:])))
        coords.append(da.from_zarr(group["coords"]))
    return da.concatenate(tiles), da.concatenate(coords)


def qc_rows_per_file(root: Path) -> list[dict]:
    """The QC page's rows as they were read before the indexes: a walk of ``status/``, ``slides/`` and ``qc/``."""
    import json

    from storage.manifest import read_record
    from storage.tile_store import TileStore

    store, rows = TileStore(root), []
    for folder in sorted(store.status_dir.iterdir()):
        record = read_record(store, folder.name)
        if record is None:
            continue
        group = store.slide_path(record.slide_id) / "zarr.json"
        rejected = json.loads(group.read_bytes()).get("attributes", {}).get("n_rejected", {}) if group.is_file() else {}
        picture = store.qc_path(record.slide_id)
        rows.append({"slide_id": record.slide_id, "n_rejected": sum(rejected.values()), "picture": picture.is_file()})
    return rows


def measure_qc(root: Path) -> dict:
    from storage.manifest import read_manifest
    from storage.tile_store import TileStore
    from tiling.qc_index import write_qc_index

    store, row = TileStore(root), {}
    row["qc_s"], _ = timed(lambda: write_qc_index(store), 3)
    row["qc_before_s"], before = timed(lambda: qc_rows_per_file(root))
    row["manifest_s"], manifest = timed(lambda: read_manifest(store), 3)
    assert len(before) == len(manifest) == len(store.complete_slide_ids())
    return row


def measure(root: Path, work: Path, threads: int) -> dict:
    from storage.embedding_store import EmbeddingStore, open_embeddings
    from storage.read import open_tiles
    from storage.tile_units import open_tile_source

    row = {}
    row["open_tiles_s"], dataset = timed(lambda: open_tiles(root), 3)
    row["tiles"] = dataset.sizes["tile"]
    row["open_tiles_before_s"], _ = timed(lambda: open_tiles_per_group(root))
    (root / "index" / "index.json").unlink()  # the slide index, not the records' copy in index/records/
    shutil.rmtree(root / "index" / "pending", ignore_errors=True)
    row["open_tiles_walk_s"], _ = timed(lambda: open_tiles(root))  # walks every group, writes the index back
    source = open_tile_source(root)
    row["units_s"], units = timed(source.units, 3)
    row["units"] = len(units)
    out = work / "emb.zarr"
    shutil.rmtree(out, ignore_errors=True)
    store = EmbeddingStore.create_or_open(out, {"model": "h0-mini", "dim": DIM, "dtype": DTYPE})
    row["prepare_s"], prepared = timed(lambda: store.prepare(source, DIM, DTYPE, threads=threads))
    row["reprepare_s"], _ = timed(lambda: store.prepare(source, DIM, DTYPE, threads=threads))
    todo = {unit.key for unit in prepared}
    store.done_dir.mkdir(exist_ok=True)
    for key in todo:
        os.close(os.open(store.done_dir / key, os.O_CREAT | os.O_WRONLY, 0o644))
    row["poll_s"], finished = timed(store.count_done, 5)
    assert finished == len(todo)
    row["open_embeddings_s"], data = timed(lambda: open_embeddings(out), 3)
    assert data.sizes["slide"] == len(source.groups())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 6093])
    parser.add_argument("--tiles", type=int, default=9, help="tiles per slide")
    parser.add_argument("--shard", type=int, default=2, help="tiles per shard")
    parser.add_argument("--workers", type=int, default=2, help="processes publishing slides at once")
    parser.add_argument("--threads", type=int, default=8, help="threads preparing the embedding store")
    parser.add_argument("--work", type=Path, default=Path("/tmp/distillpath-scale-stores"))
    parser.add_argument("--qc-only", action="store_true", help="time the QC page and the manifest only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the walk's warning is expected here
    from storage.tile_store import TileStore

    shutil.rmtree(args.work, ignore_errors=True)
    root = args.work / "tiles.zarr"
    TileStore.create_or_open(root, {"tile_size_px": TILE_PX})
    if args.qc_only:
        header = "| slides | publish s/slide | QC page s | QC page before s (per file) | manifest s | load (1 min) |"
    else:
        header = (
            "| slides | units | publish s/slide | open tiles s | walk s (no index) | before s (per group) | units s "
            "| prepare s | re-prepare s | poll ms | open embeddings s | QC page s | QC page before s (per file) "
            "| manifest s | load (1 min) |"
        )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    done = 0
    for size in sorted(args.sizes):
        publish_s = grow(root, done, size, args.tiles, args.shard, args.workers)
        per_slide = publish_s / (size - done)
        done = size
        qc = measure_qc(root)
        cells = [f"{size:,}", f"{per_slide:.3f}"]
        if not args.qc_only:
            row = measure(root, args.work, args.threads)
            cells[1:1] = [f"{row['units']:,}"]
            cells += [
                f"{row['open_tiles_s']:.3f}",
                f"{row['open_tiles_walk_s']:.2f}",
                f"{row['open_tiles_before_s']:.2f}",
                f"{row['units_s']:.3f}",
                f"{row['prepare_s']:.1f}",
                f"{row['reprepare_s']:.2f}",
                f"{1000 * row['poll_s']:.1f}",
                f"{row['open_embeddings_s']:.3f}",
            ]
        cells += [f"{qc['qc_s']:.3f}", f"{qc['qc_before_s']:.2f}", f"{qc['manifest_s']:.3f}"]
        print(f"| {' | '.join(cells)} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
