"""The embedding store: one vector per tile, laid out like the tile store it was computed from.

Layout (see ``docs/storage.md``)::

    STORE/zarr.json                   root: layout, the embedding parameters (model, weights checksum,
                                      pooling, dim, dtype), the source store
    STORE/slides/<slide_id>/          from a tile store: embeddings [tile, dim], coords, tissue_fraction
    STORE/embeddings                  from an aligned tile store: [condition, tile, dim] (+ coords, grid)
    STORE/done/<unit>                 an empty marker per source shard whose embeddings are written
    STORE/staging/                    slide groups being created; run.lock

Embeddings are chunked exactly like the source's tile shards, so each unit
of work (one shard) writes one chunk, then its marker: a killed job loses at
most the chunks without markers, which the next run recomputes. Slide
groups appear by rename, so readers never see half a group.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import zarr

from storage.atomic import write_bytes_atomic, write_zarr_group_atomic
from storage.tile_store import RunStore, StoreError
from storage.tile_units import TileSource, TileUnit

LAYOUT_NAME = "distillpath.embedding-store"
_COPIED_PER_SLIDE = ("coords", "tissue_fraction")
_COPIED_ALIGNED = ("coords", "tissue_fraction", "grid")


class EmbeddingStore(RunStore):
    """Embeddings of every tile of one tile store, by one model."""

    LAYOUT_NAME = LAYOUT_NAME
    KIND = "embedding store"
    PARAMETERS_KEY = "embedding"
    FOLDERS = {"done": "one empty marker file per source shard whose embeddings are written"}

    def array_path(self, group: str) -> Path:
        return self.root / "slides" / group / "embeddings" if group else self.root / "embeddings"

    def is_done(self, unit: TileUnit) -> bool:
        return (self.root / "done" / unit.key).is_file()

    def write_unit(self, unit: TileUnit, embeddings: np.ndarray) -> None:
        """Store ``[count, dim]`` embeddings of ``unit`` (one whole chunk), then mark the unit done."""
        array = zarr.open_array(self.array_path(unit.group), mode="r+")
        rows = slice(unit.start, unit.start + unit.count)
        array[(*unit.position[:-1], rows)] = embeddings.astype(array.dtype)
        write_bytes_atomic(self.root / "done" / unit.key, b"")

    def prepare(self, source: TileSource, dim: int, dtype: str) -> None:
        """Create the arrays for every group of ``source`` (keeping those already right), before any unit runs.

        A group whose source changed since (a slide tiled again, an aligned
        store planned anew) is recreated and its markers dropped.
        """
        for group in source.groups():
            source_group = source.tiles_path(group).parent
            stamp = _source_stamp(source_group)
            target = self.array_path(group).parent
            if _read_attributes(target).get("source_stamp") == stamp:
                continue
            for marker in (self.root / "done").glob(f"{group}.*" if group else "[0-9]*"):
                marker.unlink()
            if group:
                self._create_slide_group(source_group, group, stamp, dim, dtype)
            else:
                self._create_aligned_arrays(source_group, stamp, dim, dtype)

    def _create_slide_group(self, source_group: Path, slide_id: str, stamp: str, dim: int, dtype: str) -> None:
        staging = self.new_staging_path(slide_id)
        tiles = zarr.open_array(source_group / "tiles", mode="r")
        group = zarr.open_group(staging, mode="w")
        _create_embeddings(group, tiles, dim, dtype, ("tile", "feature"))
        _copy_arrays(source_group, group, _COPIED_PER_SLIDE)
        group.attrs.update({"slide_id": slide_id, "source_stamp": stamp, "source_group": str(source_group)})
        (self.root / "slides").mkdir(exist_ok=True)
        if not (self.root / "slides" / "zarr.json").exists():
            write_zarr_group_atomic(self.root / "slides", {"description": "embeddings of each slide"})
        self.publish_folder(staging, self.root / "slides" / slide_id)

    def _create_aligned_arrays(self, source_root: Path, stamp: str, dim: int, dtype: str) -> None:
        for name in ("embeddings", *_COPIED_ALIGNED):
            shutil.rmtree(self.root / name, ignore_errors=True)
        group = zarr.open_group(self.root, mode="r+")
        tiles = zarr.open_array(source_root / "tiles", mode="r")
        _create_embeddings(group, tiles, dim, dtype, ("condition", "tile", "feature"))
        _copy_arrays(source_root, group, _COPIED_ALIGNED)
        plan = zarr.open_group(source_root, mode="r").attrs["plan"]
        group.attrs.update({"source_stamp": stamp, "conditions": plan["conditions"], "condition_table": plan["table"]})


def _create_embeddings(group: zarr.Group, tiles: zarr.Array, dim: int, dtype: str, dims: tuple[str, ...]) -> None:
    """``embeddings`` shaped like ``tiles`` minus the image axes plus a feature axis, one chunk per tile shard."""
    leading = tiles.shape[:-3]
    shard = tiles.shards[len(leading) - 1]
    chunks = (*[1] * (len(leading) - 1), max(1, shard), dim)
    group.create_array("embeddings", shape=(*leading, dim), chunks=chunks, dtype=dtype, fill_value=np.nan,
                       dimension_names=dims)


def _copy_arrays(source: Path, target: zarr.Group, names: tuple[str, ...]) -> None:
    """Copy small per-tile arrays so that the embeddings can be used without the tile store."""
    for name in names:
        array = zarr.open_array(source / name, mode="r")
        copy = target.create_array(name, shape=array.shape, dtype=array.dtype,
                                   chunks=tuple(max(1, n) for n in array.shape),
                                   dimension_names=array.metadata.dimension_names)
        copy[...] = array[...]
        copy.attrs.update(dict(array.attrs))


def _read_attributes(path: Path) -> dict:
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except FileNotFoundError:
        return {}


def _source_stamp(source_group: Path) -> str:
    """What identifies this version of the source's tiles: the slide's creation time or the aligned plan's id."""
    attributes = _read_attributes(source_group)
    if "plan" in attributes:
        return attributes["plan"]["plan_id"]
    return f"{attributes.get('created_at')}/{attributes.get('n_tiles')}"


def open_embedding_store(path: Path | str) -> EmbeddingStore:
    store = EmbeddingStore(path)
    if store.read_attributes() is None:
        raise StoreError(f"{store.root} is not a distillpath embedding store")
    return store


def _complete_rows(store: EmbeddingStore, array: zarr.Array, group: str) -> np.ndarray:
    """``[leading...]`` bool: which rows (a slide: one; an aligned store: one per condition) have every chunk marked done."""
    leading, (n_tiles, chunk) = array.shape[:-2], (array.shape[-2], array.chunks[-2])
    n_chunks = -(-n_tiles // chunk)
    complete = np.zeros(leading, dtype=bool)
    for row in np.ndindex(*leading):
        prefix = [group] if group else []
        complete[row] = all(
            (store.root / "done" / ".".join([*prefix, *map(str, row), str(k)])).is_file() for k in range(n_chunks)
        )
    return complete


def open_embeddings(path: Path | str):
    """The store as a lazy xarray Dataset.

    From a tile store: ``embeddings [tile, feature]``, ``coords [tile, xy]``,
    ``slide_index [tile]`` over the slides whose embeddings are complete
    (coordinate ``slide_id``). From an aligned tile store:
    ``embeddings [condition, tile, feature]`` with ``complete [condition]``.
    """
    import dask.array as da
    import xarray as xr

    store = open_embedding_store(path)
    parameters = store.read_attributes()["embedding"]
    attrs = {"store": str(store.root), **{k: v for k, v in parameters.items() if v is not None}}
    if (store.root / "embeddings").exists():
        group = zarr.open_group(store.root, mode="r")
        embeddings = group["embeddings"]
        names = group.attrs["conditions"]
        return xr.Dataset(
            {
                "embeddings": (("condition", "tile", "feature"), da.from_zarr(embeddings)),
                "coords": (("condition", "tile", "xy"), da.from_zarr(group["coords"])),
                "grid": (("tile", "colrow"), da.from_zarr(group["grid"])),
                "complete": (("condition",), _complete_rows(store, embeddings, "")),
            },
            coords={"condition": names, "xy": ["x", "y"], "colrow": ["col", "row"]},
            attrs=attrs,
        )
    slides_dir = store.root / "slides"
    ids = sorted(p.name for p in slides_dir.iterdir() if (p / "zarr.json").is_file()) if slides_dir.is_dir() else []
    parts, coords, slide_index, kept = [], [], [], []
    for slide_id in ids:
        group = zarr.open_group(slides_dir / slide_id, mode="r")
        if group["embeddings"].shape[0] == 0 or not _complete_rows(store, group["embeddings"], slide_id).all():
            continue
        parts.append(da.from_zarr(group["embeddings"]))
        coords.append(da.from_zarr(group["coords"]))
        slide_index.append(da.full(group["embeddings"].shape[0], len(kept), dtype=np.int32))
        kept.append(slide_id)
    if not parts:
        dim = parameters["dim"]
        parts, coords = [da.zeros((0, dim), dtype=parameters["dtype"])], [da.zeros((0, 2), dtype=np.int64)]
        slide_index = [da.zeros(0, dtype=np.int32)]
    return xr.Dataset(
        {
            "embeddings": (("tile", "feature"), da.concatenate(parts)),
            "coords": (("tile", "xy"), da.concatenate(coords)),
            "slide_index": (("tile",), da.concatenate(slide_index)),
        },
        coords={"slide_id": ("slide", kept), "xy": ["x", "y"]},
        attrs=attrs,
    )
