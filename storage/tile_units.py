"""Any tile store of this project seen as a list of units: one shard of tiles each.

A unit is the natural piece of work for a job that reads every tile once
(embedding): one file read, up to 2,048 tiles, written back as one chunk.
Both store layouts are covered: the tile store (one ``tiles [tile, …]`` array
per slide) and the aligned tile store (one ``tiles [condition, tile, …]``
array). Units are listed in a fixed order, so that processes can split them
by rank without talking to each other. A tile store's units come from its
index (one file), not from opening every slide's array.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import zarr

from storage.aligned_store import LAYOUT_NAME as ALIGNED_LAYOUT
from storage.aligned_store import AlignedTileStore
from storage.shard_file import read_shard, read_shard_encoded, read_shard_images
from storage.tile_store import LAYOUT_NAME as TILE_LAYOUT
from storage.tile_store import StoreError, TileStore


@lru_cache(maxsize=256)
def _open_array(path: str) -> zarr.Array:
    """A tiles array's metadata, read once per process: a training step reads from ~100 units."""
    return zarr.open_array(path, mode="r")


@dataclass(frozen=True)
class TileUnit:
    """One shard of tiles.

    Attributes
    ----------
    group
        Slide id in a tile store, ``""`` in an aligned tile store.
    position
        Index of the shard in its ``tiles`` array: ``(shard,)`` or ``(condition, shard)``.
    start, count
        The tiles ``[start, start + count)`` along the tile axis.
    """

    group: str
    position: tuple[int, ...]
    start: int
    count: int

    @property
    def key(self) -> str:
        """A file-name-safe unique name: ``<slide_id>.<shard>`` or ``<condition>.<shard>``."""
        return ".".join([self.group, *map(str, self.position)] if self.group else map(str, self.position))


@dataclass(frozen=True)
class TileSource:
    """A tile store opened for reading unit by unit; picklable (paths only)."""

    root: Path
    layout: str

    def tiles_path(self, group: str) -> Path:
        return self.root / "slides" / group / "tiles" if self.layout == TILE_LAYOUT else self.root / "tiles"

    def groups(self) -> list[str]:
        """Slides whose tiles are complete (tile store), or ``[""]`` (aligned tile store, once planned)."""
        if self.layout == TILE_LAYOUT:
            return TileStore(self.root).complete_slide_ids()
        return [""] if AlignedTileStore(self.root).read_plan() is not None else []

    def _ready_conditions(self) -> set[int]:
        """Rows of an aligned store whose tiles are all written (the others read as zeros)."""
        store = AlignedTileStore(self.root)
        return {i for i, name in enumerate(store.read_plan()["conditions"]) if store.is_extracted(name)}

    def units(self) -> list[TileUnit]:
        """Every unit of the store whose tiles are complete, in a fixed order."""
        if self.layout == TILE_LAYOUT:
            entries = TileStore(self.root).slide_entries()
            return [
                unit
                for slide_id, entry in entries.items()
                for unit in slide_units(slide_id, entry["n_tiles"], entry["tiles_per_shard"])
            ]
        if not self.groups():
            return []
        array = zarr.open_array(self.tiles_path(""), mode="r")  # [condition, tile, y, x, channel]
        shard, n_tiles = array.shards[1], array.shape[1]
        return [
            TileUnit("", (condition, index), start, min(shard, n_tiles - start))
            for condition in sorted(self._ready_conditions())
            for index, start in enumerate(range(0, n_tiles, shard))
        ]

    def read(self, unit: TileUnit) -> np.ndarray:
        """The unit's tiles, ``[count, H, W, 3]`` uint8."""
        path = self.tiles_path(unit.group)
        return read_shard(path, zarr.open_array(path, mode="r"), unit.position, unit.count)

    def read_encoded(self, unit: TileUnit, start: int = 0, count: int | None = None) -> list[bytes]:
        """Tiles ``[start, start + count)`` of the unit (all by default) as stored, one JPEG byte string each,
        in tile order; decoding is left to the caller.
        """
        path = self.tiles_path(unit.group)
        count = unit.count - start if count is None else count
        if start < 0 or count < 0 or start + count > unit.count:
            raise ValueError(f"tiles [{start}, {start + count}) are not in unit {unit.key} of {unit.count}")
        return read_shard_encoded(path, zarr.open_array(path, mode="r"), unit.position, count, start=start)

    def read_tiles(self, unit: TileUnit, tiles: list[int]) -> list[bytes]:
        """Tiles ``tiles`` (indices within the unit, any order) as stored, one JPEG byte string each, reading
        only their index entries and bytes (see :func:`storage.shard_file.read_shard_images`).
        """
        if any(not 0 <= tile < unit.count for tile in tiles):
            raise ValueError(f"tiles {sorted(tiles)} are not all in unit {unit.key} of {unit.count}")
        path = self.tiles_path(unit.group)
        return read_shard_images(path, _open_array(str(path)), unit.position, tiles)


def slide_units(slide_id: str, n_tiles: int, tiles_per_shard: int) -> list[TileUnit]:
    """The units of one slide of ``n_tiles`` tiles in shards of ``tiles_per_shard``."""
    return [
        TileUnit(slide_id, (index,), start, min(tiles_per_shard, n_tiles - start))
        for index, start in enumerate(range(0, n_tiles, tiles_per_shard))
    ]


def open_tile_source(path: Path | str) -> TileSource:
    """The tile store or aligned tile store at ``path``.

    Raises
    ------
    StoreError
        When ``path`` is neither.
    """
    root = Path(path).resolve()
    try:
        layout = zarr.open_group(root, mode="r").attrs.get("layout")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        layout = None
    if layout not in (TILE_LAYOUT, ALIGNED_LAYOUT):
        raise StoreError(f"{root} is neither a distillpath tile store nor an aligned tile store")
    return TileSource(root, layout)
