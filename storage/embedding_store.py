"""The embedding store: one vector per tile, laid out like the tile store it was computed from.

Layout (see ``docs/storage.md``)::

    STORE/zarr.json                   root: layout, the embedding parameters (model, weights checksum,
                                      pooling, dim, dtype), the source store
    STORE/slides/<slide_id>/          from a tile store: embeddings [tile, dim], coords, tissue_fraction
    STORE/embeddings                  from an aligned tile store: [condition, tile, dim] (+ coords, grid)
    STORE/done/<unit>                 an empty marker per source shard whose embeddings are written
    STORE/index/index.json            slide ids, tile counts, chunk lengths, source stamps (see store_index)
    STORE/index/units.json            the unit list fixed by the last preparation, read by every rank
    STORE/staging/                    slide groups being created; run.lock

Embeddings are chunked exactly like the source's tile shards, so each unit
of work (one shard) writes one chunk, then its marker: a killed job loses at
most the chunks without markers, which the next run recomputes. Slide
groups appear by rename, so readers never see half a group.

Preparation lays out every group before any unit runs, from the tile
store's index, in parallel threads, and then fixes the run's unit list in
``units.json``: every rank embeds its share of that list, so a slide the
tiler publishes meanwhile is neither taken twice nor half-prepared; the next
run's preparation picks it up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from storage.atomic import (
    write_bytes_atomic,
    write_json_atomic,
    write_zarr_group_atomic,
)
from storage.store_index import StoreIndex, indexed_entries, published_names
from storage.tile_store import RunStore, StoreError, TileStore, utc_now
from storage.tile_units import TileSource, TileUnit

LAYOUT_NAME = "distillpath.embedding-store"
_COPIED_PER_SLIDE = ("coords", "tissue_fraction")
_COPIED_ALIGNED = ("coords", "tissue_fraction", "grid")
_ALIGNED_MARKER = re.compile(r"\d+\.\d+")


class EmbeddingStore(RunStore):
    """Embeddings of every tile of one tile store, by one model."""

    LAYOUT_NAME = LAYOUT_NAME
    KIND = "embedding store"
    PARAMETERS_KEY = "embedding"
    FOLDERS = {
        "done": "one empty marker file per source shard whose embeddings are written",
        "index": "consolidated index of the slides and the prepared unit list (JSON, docs/storage.md)",
    }

    def __init__(self, root: Path | str) -> None:
        super().__init__(root)
        self.slides_dir = self.root / "slides"
        self.done_dir = self.root / "done"
        self.index = StoreIndex(self.root / "index")
        self.units_path = self.root / "index" / "units.json"

    def array_path(self, group: str) -> Path:
        return self.slides_dir / group / "embeddings" if group else self.root / "embeddings"

    def done_keys(self) -> set[str]:
        """Keys of the units whose embeddings are written: one listing of ``done/``."""
        try:
            return {name for name in os.listdir(self.done_dir) if not name.startswith(".") and name != "zarr.json"}
        except FileNotFoundError:
            return set()

    def count_done(self) -> int:
        """How many units are marked done, all runs together: one listing, no set (the flow's progress poll)."""
        try:
            return sum(1 for name in os.listdir(self.done_dir) if name[0] != "." and name != "zarr.json")
        except FileNotFoundError:
            return 0

    def is_done(self, unit: TileUnit) -> bool:
        return (self.done_dir / unit.key).is_file()

    def write_unit(self, unit: TileUnit, embeddings: np.ndarray) -> None:
        """Store ``[count, dim]`` embeddings of ``unit`` (one whole chunk), then mark the unit done."""
        array = zarr.open_array(self.array_path(unit.group), mode="r+")
        rows = slice(unit.start, unit.start + unit.count)
        array[(*unit.position[:-1], rows)] = embeddings.astype(array.dtype)
        write_bytes_atomic(self.done_dir / unit.key, b"")

    def slide_entries(self) -> dict[str, dict]:
        """``{slide_id: {"n_tiles", "chunk", "source_stamp"}}`` of every slide group, from the index."""
        return indexed_entries(
            self.index, published_names(self.slides_dir), lambda s: _embedding_entry(self.slides_dir / s), "slides"
        )

    def read_units(self) -> list[TileUnit]:
        """The unit list fixed by the last :meth:`prepare`.

        Raises
        ------
        StoreError
            When the store was never prepared.
        """
        try:
            rows = json.loads(self.units_path.read_bytes())["rows"]
        except FileNotFoundError:
            raise StoreError(f"{self.root} has no unit list: prepare the store first") from None
        return [
            TileUnit(group, (*leading, index), start, min(shard, n_tiles - start))
            for group, leading, n_tiles, shard in rows
            for index, start in enumerate(range(0, n_tiles, shard))
        ]

    def prepare(self, source: TileSource, dim: int, dtype: str, *, threads: int = 8) -> list[TileUnit]:
        """Lay out the arrays for every complete group of ``source``, then fix and return the run's unit list.

        Groups already right are kept; a group whose source changed since (a
        slide tiled again, an aligned store planned anew) is recreated and its
        markers dropped. New slide groups are made by ``threads`` threads
        (the work is file creation, which releases the GIL). Call once, in one
        process, before any rank embeds: ranks read the list with
        :meth:`read_units`.
        """
        if source.layout == "distillpath.tile-store":
            rows = self._prepare_slides(source, dim, dtype, threads)
        else:
            rows = self._prepare_aligned(source, dim, dtype)
        write_json_atomic(self.units_path, {"prepared_at": utc_now(), "source": str(source.root), "rows": rows})
        return self.read_units()

    def _prepare_slides(self, source: TileSource, dim: int, dtype: str, threads: int) -> list[list]:
        wanted = TileStore(source.root).slide_entries()
        have = self.slide_entries()
        stale = [s for s, e in wanted.items() if have.get(s, {}).get("source_stamp") != _stamp_of(e)]
        if stale:
            stale_set = set(stale)
            for key in self.done_keys():
                if key.rpartition(".")[0] in stale_set:  # exactly "<slide_id>.<shard>", not "<slide_id>.x.<shard>"
                    (self.done_dir / key).unlink(missing_ok=True)
            if not (self.slides_dir / "zarr.json").exists():
                write_zarr_group_atomic(self.slides_dir, {"description": "embeddings of each slide"})
            template = _embeddings_template(dim, dtype)
            with ThreadPoolExecutor(max(1, threads)) as pool:
                made = dict(pool.map(lambda s: (s, self._create_slide_group(source, s, wanted[s], template)), stale))
            self.index.add_many(made)
        return [[s, [], e["n_tiles"], e["tiles_per_shard"]] for s, e in wanted.items()]

    def _create_slide_group(self, source: TileSource, slide_id: str, tiles: dict, template: dict) -> dict:
        """Make one slide's group in staging and publish it; return its index entry."""
        source_group = source.tiles_path(slide_id).parent
        entry = {
            "n_tiles": tiles["n_tiles"],
            "chunk": max(1, tiles["tiles_per_shard"]),
            "source_stamp": _stamp_of(tiles),
        }
        staging = self.new_staging_path(slide_id)
        # Plain writes, no fsync: the folder is private until its rename, and like the tile store's
        # arrays it is not made durable file by file (an fsync per file tripled the preparation's time).
        (staging / "embeddings").mkdir(parents=True)
        attributes = {"slide_id": slide_id, "source_stamp": entry["source_stamp"], "source_group": str(source_group)}
        (staging / "zarr.json").write_text(
            json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}, indent=2)
        )
        metadata = {**template, "shape": [entry["n_tiles"], template["shape"][1]]}
        metadata["chunk_grid"] = {
            "name": "regular",
            "configuration": {"chunk_shape": [entry["chunk"], template["shape"][1]]},
        }
        (staging / "embeddings" / "zarr.json").write_text(json.dumps(metadata, indent=2))
        for name in _COPIED_PER_SLIDE:  # small per-tile arrays, so the embeddings are usable without the tiles
            _copy_small_folder(str(source_group / name), str(staging / name))
        self.publish_folder(staging, self.slides_dir / slide_id)
        return entry

    def _prepare_aligned(self, source: TileSource, dim: int, dtype: str) -> list[list]:
        units = source.units()
        if source.groups():
            stamp = _read_attributes(source.root)["plan"]["plan_id"]
            if _read_attributes(self.root).get("source_stamp") != stamp:
                for key in published_names(self.done_dir):
                    if _ALIGNED_MARKER.fullmatch(key):
                        (self.done_dir / key).unlink(missing_ok=True)
                self._create_aligned_arrays(source.root, stamp, dim, dtype)
        rows: dict[int, list] = {}
        for unit in units:  # one row per ready condition: its shards are consecutive
            row = rows.setdefault(unit.position[0], ["", [unit.position[0]], 0, unit.count])
            row[2] += unit.count
        return list(rows.values())

    def _create_aligned_arrays(self, source_root: Path, stamp: str, dim: int, dtype: str) -> None:
        for name in ("embeddings", *_COPIED_ALIGNED):
            shutil.rmtree(self.root / name, ignore_errors=True)
        group = zarr.open_group(self.root, mode="r+")
        tiles = zarr.open_array(source_root / "tiles", mode="r")
        chunks = (1, max(1, tiles.shards[1]), dim)
        group.create_array(
            "embeddings",
            shape=(*tiles.shape[:2], dim),
            chunks=chunks,
            dtype=dtype,
            fill_value=np.nan,
            dimension_names=("condition", "tile", "feature"),
        )
        for name in _COPIED_ALIGNED:
            shutil.copytree(source_root / name, self.root / name)
        plan = zarr.open_group(source_root, mode="r").attrs["plan"]
        group.attrs.update({"source_stamp": stamp, "conditions": plan["conditions"], "condition_table": plan["table"]})


def _copy_small_folder(source: str, target: str) -> None:
    """Copy a folder of small files (a per-tile array): folders made, bytes copied, nothing else.

    ``shutil.copytree`` also checks, stats and copies the permissions, times
    and extended attributes of every entry: about twice the system calls of
    the copy itself, on every slide of a preparation.
    """
    os.mkdir(target)
    with os.scandir(source) as entries:
        for entry in entries:
            destination = os.path.join(target, entry.name)
            if entry.is_dir(follow_symlinks=False):
                _copy_small_folder(entry.path, destination)
            else:
                with open(entry.path, "rb", buffering=0) as file, open(destination, "wb", buffering=0) as copy:
                    copy.write(file.readall())


def _embeddings_template(dim: int, dtype: str) -> dict:
    """Zarr's own metadata for an ``embeddings [tile, feature]`` array (NaN fill), to be given a shape per slide.

    Writing the metadata file from a template costs a tenth of zarr's
    ``create_array`` per slide; zarr writes the template itself, so the
    format stays zarr's.
    """
    with tempfile.TemporaryDirectory() as folder:
        zarr.create_array(
            Path(folder) / "a",
            shape=(1, dim),
            chunks=(1, dim),
            dtype=dtype,
            fill_value=np.nan,
            dimension_names=("tile", "feature"),
        )
        return json.loads((Path(folder) / "a" / "zarr.json").read_bytes())


def _read_attributes(path: Path) -> dict:
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except FileNotFoundError:
        return {}


def _stamp_of(tile_entry: dict) -> str:
    """What identifies this version of a source slide's tiles: its creation time and tile count."""
    return f"{tile_entry.get('created_at')}/{tile_entry.get('n_tiles')}"


def _embedding_entry(group: Path) -> dict:
    """A slide group's index entry, read from the group itself (when the index lacks it)."""
    array = json.loads((group / "embeddings" / "zarr.json").read_bytes())
    return {
        "n_tiles": int(array["shape"][0]),
        "chunk": int(array["chunk_grid"]["configuration"]["chunk_shape"][0]),
        "source_stamp": _read_attributes(group).get("source_stamp"),
    }


def open_embedding_store(path: Path | str) -> EmbeddingStore:
    store = EmbeddingStore(path)
    if store.read_attributes() is None:
        raise StoreError(f"{store.root} is not a distillpath embedding store")
    return store


def _complete_rows(done: set[str], array: zarr.Array) -> np.ndarray:
    """``[condition]`` bool: which conditions of the aligned embeddings have every chunk marked done."""
    n_conditions, (n_tiles, chunk) = array.shape[0], (array.shape[1], array.chunks[1])
    return np.array(
        [all(f"{c}.{k}" in done for k in range(-(-n_tiles // chunk))) for c in range(n_conditions)], dtype=bool
    )


def open_embeddings(path: Path | str):
    """The store as a lazy xarray Dataset.

    From a tile store: ``embeddings [tile, feature]``, ``coords [tile, xy]``,
    per-tile coordinates ``slide_id`` (indexed) and ``slide_index`` (numpy)
    over the slides whose embeddings are complete (coordinate ``slide``,
    as in :func:`storage.read.open_tiles`). From an aligned tile store:
    ``embeddings [condition, tile, feature]`` with ``complete [condition]``.
    Slides and their sizes come from the index and completeness from one
    listing of ``done/``: no slide group is opened until its data is computed.
    """
    import xarray as xr

    from storage.lazy_arrays import concatenated_rows, tile_coordinates, with_slide_index, zarr_variable

    store = open_embedding_store(path)
    parameters = store.read_attributes()["embedding"]
    attrs = {"store": str(store.root), **{k: v for k, v in parameters.items() if v is not None}}
    done = store.done_keys()
    if (store.root / "embeddings").exists():
        group = zarr.open_group(store.root, mode="r")
        embeddings = group["embeddings"]
        return xr.Dataset(
            {
                "embeddings": (("condition", "tile", "feature"), zarr_variable(embeddings)),
                "coords": (("condition", "tile", "xy"), zarr_variable(group["coords"])),
                "grid": (("tile", "colrow"), zarr_variable(group["grid"])),
                "complete": (("condition",), _complete_rows(done, embeddings)),
            },
            coords={"condition": group.attrs["conditions"], "xy": ["x", "y"], "colrow": ["col", "row"]},
            attrs=attrs,
        )
    kept = {
        slide_id: entry
        for slide_id, entry in store.slide_entries().items()
        if entry["n_tiles"] and all(f"{slide_id}.{k}" in done for k in range(-(-entry["n_tiles"] // entry["chunk"])))
    }
    paths = [f"{store.slides_dir}/{slide_id}" for slide_id in kept]
    counts, chunks = [e["n_tiles"] for e in kept.values()], [e["chunk"] for e in kept.values()]
    return with_slide_index(
        xr.Dataset(
            {
                "embeddings": (
                    ("tile", "feature"),
                    concatenated_rows(
                        "embeddings",
                        [(f"{p}/embeddings", n, k) for p, n, k in zip(paths, counts, chunks)],
                        (parameters["dim"],),
                        parameters["dtype"],
                    ),
                ),
                "coords": (
                    ("tile", "xy"),
                    concatenated_rows("coords", [(f"{p}/coords", n, n) for p, n in zip(paths, counts)], (2,), np.int64),
                ),
            },
            coords={**tile_coordinates(list(kept), counts), "xy": ["x", "y"]},
            attrs=attrs,
        )
    )
