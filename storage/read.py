"""Read a tile store: lazy xarray views for analysts, random access for training.

Needs only numpy, zarr, imagecodecs and xarray: dask, when installed, backs
the views with one task per shard; without it they read on indexing.

Both see only complete slides (those published into ``slides/``), so a store
that is still being written can be read safely. Both take the slides' sizes
from the store's index (one file), so opening a 6,093-slide store does not
read 6,093 slide groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from storage.lazy_arrays import concatenated_rows, tile_coordinates, with_slide_index
from storage.tile_store import StoreError, TileStore


def _open_store(store: TileStore | Path | str) -> TileStore:
    store = store if isinstance(store, TileStore) else TileStore(store)
    if store.read_attributes() is None:
        raise StoreError(f"{store.root} is not a distillpath tile store")
    return store


def _selected_ids(store: TileStore, slide_ids: list[str] | None) -> list[str]:
    available = store.complete_slide_ids()
    if slide_ids is None:
        return available
    missing = sorted(set(slide_ids) - set(available))
    if missing:
        raise KeyError(f"{store.root} has no complete slide {', '.join(missing)}")
    return list(slide_ids)


def _selected_entries(store: TileStore, slide_ids: list[str] | None) -> dict[str, dict]:
    """Index entries of the chosen slides (all complete ones by default), in the order asked."""
    entries = store.slide_entries()
    if slide_ids is None:
        return entries
    missing = sorted(set(slide_ids) - set(entries))
    if missing:
        raise KeyError(f"{store.root} has no complete slide {', '.join(missing)}")
    return {slide_id: entries[slide_id] for slide_id in slide_ids}


def open_slide_group(store: TileStore | Path | str, slide_id: str) -> zarr.Group:
    """The zarr group of one complete slide (arrays ``tiles``, ``coords``, ``tissue_fraction``, ``tissue_mask``)."""
    store = _open_store(store)
    return zarr.open_group(store.slide_path(_selected_ids(store, [slide_id])[0]), mode="r")


def open_tiles(store: TileStore | Path | str, slide_ids: list[str] | None = None) -> xr.Dataset:
    """All tiles of the chosen slides as one lazy dataset along a ``tile`` dimension.

    Variables: ``tiles`` ``[tile, y, x, channel]`` uint8, ``coords``
    ``[tile, xy]`` level-0 pixels, ``tissue_fraction`` ``[tile]``, and
    ``n_tiles`` ``[slide]``. Coordinates: ``slide_id`` and ``slide_index``
    per tile (numpy; ``slide_id`` indexed, so ``ds.sel(slide_id="s1")``
    works) and ``slide``, the slide ids in order, including slides without
    tiles. With dask, chunks follow the zarr shards, so a computation reads
    each shard file once.
    """
    store = _open_store(store)
    entries = _selected_entries(store, slide_ids)
    ids = list(entries)
    attributes = store.read_attributes()
    size = attributes["tiling"]["tile_size_px"]
    paths = [f"{store.slides_dir}/{slide_id}" for slide_id in ids]
    counts = [entries[s]["n_tiles"] for s in ids]
    shards = [entries[s]["tiles_per_shard"] for s in ids]
    # Blocks: the tiles' shards (one file each); the per-tile arrays are one chunk per slide.
    tiles = concatenated_rows(
        "tiles", [(f"{p}/tiles", n, k) for p, n, k in zip(paths, counts, shards)], (size, size, 3), np.uint8
    )
    coords = concatenated_rows("coords", [(f"{p}/coords", n, max(1, n)) for p, n in zip(paths, counts)], (2,), np.int64)
    fractions = concatenated_rows(
        "tissue-fraction", [(f"{p}/tissue_fraction", n, max(1, n)) for p, n in zip(paths, counts)], (), np.float32
    )
    return with_slide_index(
        xr.Dataset(
            {
                "tiles": (("tile", "y", "x", "channel"), tiles),
                "coords": (("tile", "xy"), coords),
                "tissue_fraction": (("tile",), fractions),
                "n_tiles": (("slide",), np.asarray(counts, dtype=np.int64)),
            },
            coords={**tile_coordinates(ids, counts), "xy": ["x", "y"]},
            attrs={"store": str(store.root), "tiling": attributes["tiling"]},
        )
    )


class TileReader:
    """Random access to tiles by a global index, without torch or dask.

    ``reader[i]`` is tile ``i`` ``[H, W, 3]`` uint8; ``reader[i:j]`` and
    ``reader[[i, j]]`` are ``[n, H, W, 3]``. Tiles are numbered slide after
    slide in the order of ``slide_ids``; :meth:`tile_slide_ids` and
    :meth:`tile_coords` give the slide and level-0 (x, y) of many tiles at
    once. The reader pickles as paths only, so each data-loader worker opens
    its own file handles.
    """

    def __init__(self, store: TileStore | Path | str, slide_ids: list[str] | None = None) -> None:
        self.store = _open_store(store)
        entries = _selected_entries(self.store, slide_ids)
        self.slide_ids = list(entries)
        counts = [entries[s]["n_tiles"] for s in self.slide_ids]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.tile_size_px = int(self.store.read_attributes()["tiling"]["tile_size_px"])
        self._arrays: dict[str, zarr.Array] = {}
        self._coords: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        return (
            f"TileReader({str(self.store.root)!r}, {len(self.slide_ids)} slides, {len(self)} tiles "
            f"of {self.tile_size_px} px)"
        )

    def _indices(self, index) -> np.ndarray:
        """Global indices as an int64 array, negative ones counted from the end; IndexError when out of range."""
        if isinstance(index, slice):
            return np.arange(*index.indices(len(self)), dtype=np.int64)
        indices = np.asarray(index)
        if indices.dtype == bool:
            if indices.shape != (len(self),):
                raise IndexError(f"boolean index of shape {indices.shape} for {len(self)} tiles")
            return np.flatnonzero(indices)
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"tile indices must be integers, slices or booleans, got {indices.dtype}")
        indices = indices.astype(np.int64).reshape(-1)
        outside = (indices < -len(self)) | (indices >= len(self))
        if outside.any():
            raise IndexError(f"tile {int(indices[outside][0])} out of range for {len(self)} tiles")
        return indices % max(1, len(self))

    def _slides_of(self, indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, indices, side="right") - 1

    def locate(self, index: int) -> tuple[str, int]:
        """Slide id and index within that slide of global tile ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"tile {index} out of range for {len(self)} tiles")
        index %= len(self)
        slide = int(self._slides_of(np.int64(index)))
        return self.slide_ids[slide], int(index - self.offsets[slide])

    def _array(self, slide_id: str, name: str) -> zarr.Array:
        key = f"{slide_id}/{name}"
        if key not in self._arrays:
            self._arrays[key] = zarr.open_array(self.store.slide_path(slide_id) / name, mode="r")
        return self._arrays[key]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            slide_id, local = self.locate(int(index))
            return self._array(slide_id, "tiles")[local]
        indices = self._indices(index)
        out = np.empty((len(indices), self.tile_size_px, self.tile_size_px, 3), dtype=np.uint8)
        slides = self._slides_of(indices)
        for slide in np.unique(slides):
            rows = np.flatnonzero(slides == slide)
            local = indices[rows] - self.offsets[slide]
            tiles = self._array(self.slide_ids[slide], "tiles")
            first, last = int(local.min()), int(local.max())
            if last - first + 1 <= 2 * len(local):  # dense: one slice read, decoded in parallel by zarr
                out[rows] = tiles[first : last + 1][local - first]
            else:  # sparse: only the tiles asked for
                out[rows] = np.stack([tiles[int(i)] for i in local])
        return out

    def _all_coords(self) -> np.ndarray:
        if self._coords is None:
            parts = [self._array(s, "coords")[:] for s, n in zip(self.slide_ids, np.diff(self.offsets)) if n]
            self._coords = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        return self._coords

    def coords(self, index: int) -> np.ndarray:
        """Level-0 (x, y) of the top-left corner of tile ``index``."""
        slide_id, local = self.locate(index)
        return self._array(slide_id, "coords")[local]

    def tile_coords(self, index=slice(None)) -> np.ndarray:
        """Level-0 (x, y) ``[n, 2]`` of the tiles ``index`` selects (a slice, integers or booleans; all by default)."""
        return self._all_coords()[self._indices(index)]

    def tile_slide_ids(self, index=slice(None)) -> np.ndarray:
        """The slide id of each tile ``index`` selects (all by default), as a numpy string array."""
        ids = np.asarray(self.slide_ids, dtype=str) if self.slide_ids else np.zeros(0, dtype="<U1")
        return ids[self._slides_of(self._indices(index))]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}
