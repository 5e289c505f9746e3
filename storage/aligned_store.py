"""The aligned tile store: the same tissue tiles, cut from every condition of a registered study.

Layout (see ``docs/storage.md``)::

    STORE/zarr.json                  root: layout, parameters, software, and the ``plan`` once tiles are chosen
    STORE/tiles                      uint8 [condition, tile, y, x, channel], JPEG, sharded per condition
    STORE/coords                     float64 [condition, tile, xy]: level-0 (x, y) of the tile's top-left corner
    STORE/tissue_fraction            float32 [condition, tile]: share of the tile on that condition's tissue
    STORE/grid                       int32 [tile, colrow]: the tile's cell in the reference's tile grid
    STORE/registration/<condition>/  elastix transform files, registration.json, qc.png (refinement.json)
    STORE/status/<condition>/        the condition's latest record: registered, extracted or failed
    STORE/qc/<condition>.png         registration QC picture (also for failed conditions)
    STORE/staging/                   registrations being written, run.lock

The plan (conditions in array order, tile count, excluded conditions) is
written last when tiles are chosen, so a killed planning step is simply
redone. A condition's tiles are written shard by shard, each shard file
atomically, and count only once its record says ``extracted`` under the
current plan's id; :func:`open_aligned_tiles` exposes that as ``extracted``.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr

from storage.atomic import write_zarr_group_atomic
from storage.jpeg_codec import JpegCodec
from storage.manifest import SlideRecord, read_record
from storage.shard_file import write_shard
from storage.tile_store import RunStore, StoreError

LAYOUT_NAME = "distillpath.aligned-tile-store"
_ARRAYS = ("tiles", "coords", "tissue_fraction", "grid")
EXTRACTED = "extracted"
REGISTERED = "registered"


class AlignedTileStore(RunStore):
    """Tiles ``[condition, tile]`` of a study registered to one reference condition."""

    LAYOUT_NAME = LAYOUT_NAME
    KIND = "aligned tile store"
    PARAMETERS_KEY = "parameters"
    FOLDERS = {"registration": "transform of each condition onto the reference (elastix files)"}

    def registration_path(self, condition: str) -> Path:
        return self.root / "registration" / condition

    def is_registered(self, condition: str) -> bool:
        """A registration counts once its folder has been renamed into ``registration/``."""
        return (self.registration_path(condition) / "registration.json").is_file()

    def read_plan(self) -> dict | None:
        attributes = self.read_attributes() or {}
        return attributes.get("plan")

    def _write_root_attributes(self, **updates: object) -> None:
        attributes = {**(self.read_attributes() or {}), **updates}
        write_zarr_group_atomic(self.root, attributes)

    def is_extracted(self, condition: str) -> bool:
        """Whether ``condition``'s tiles were all written under the current plan."""
        plan = self.read_plan()
        record = read_record(self, condition)
        return (
            plan is not None
            and record is not None
            and record.status == EXTRACTED
            and record.extra.get("plan_id") == plan["plan_id"]
        )

    def start_plan(
        self,
        table: list[dict],
        excluded: dict[str, str],
        coords: np.ndarray,
        tissue_fraction: np.ndarray,
        grid: np.ndarray,
        *,
        tile_size_px: int,
        mpp_um: float,
        tiles_per_shard: int,
        jpeg_quality: int,
        jpeg_subsampling: str,
    ) -> dict:
        """Replace any earlier plan: create the arrays for ``len(table)`` conditions and ``len(grid)`` tiles.

        ``table`` lists the conditions in array order (reference first), one
        dict each (``name``, ``staining``, ``scanner``, ``path``, ``mpp_um``…).
        Every condition then needs extracting again. Returns the plan.
        """
        n_conditions, n_tiles = len(table), len(grid)
        if coords.shape != (n_conditions, n_tiles, 2) or tissue_fraction.shape != (n_conditions, n_tiles):
            raise ValueError(
                f"coords {coords.shape} / tissue_fraction {tissue_fraction.shape} do not match "
                f"{n_conditions} conditions x {n_tiles} tiles"
            )
        self._write_root_attributes(plan=None)
        for name in _ARRAYS:
            shutil.rmtree(self.root / name, ignore_errors=True)
        group = zarr.open_group(self.root, mode="r+")
        tile_shape = (tile_size_px, tile_size_px, 3)
        shard = max(1, min(tiles_per_shard, n_tiles))
        group.create_array(
            "tiles",
            shape=(n_conditions, n_tiles, *tile_shape),
            chunks=(1, 1, *tile_shape),
            shards=(1, shard, *tile_shape),
            dtype="uint8",
            serializer=JpegCodec(quality=jpeg_quality, subsampling=jpeg_subsampling),
            compressors=None,
            fill_value=0,
            dimension_names=("condition", "tile", "y", "x", "channel"),
        )
        for name, values, dims in (
            ("coords", coords.astype(np.float64), ("condition", "tile", "xy")),
            ("tissue_fraction", tissue_fraction.astype(np.float32), ("condition", "tile")),
            ("grid", grid.astype(np.int32), ("tile", "colrow")),
        ):
            array = group.create_array(
                name,
                shape=values.shape,
                dtype=values.dtype,
                chunks=tuple(max(1, n) for n in values.shape),
                dimension_names=dims,
            )
            array[...] = values
        group["coords"].attrs.update(
            {
                "frame": "level-0 pixels of each condition",
                "columns": ["x", "y"],
                "corner": "top-left of the reference tile, mapped",
            }
        )
        group["grid"].attrs.update({"columns": ["col", "row"], "frame": "reference tile grid"})
        plan = {
            "plan_id": uuid.uuid4().hex,
            "conditions": [row["name"] for row in table],
            "table": table,
            "excluded": excluded,
            "n_tiles": n_tiles,
            "tile_size_px": tile_size_px,
            "mpp_um": mpp_um,
            "tiles_per_shard": shard,
        }
        self._write_root_attributes(plan=plan)
        return plan

    def write_condition_tiles(self, condition_index: int, first_tile: int, tiles: np.ndarray) -> None:
        """Write tiles ``[first_tile, first_tile + len(tiles))`` of one condition: whole shards only.

        ``first_tile`` must start a shard, and ``tiles`` fill it (the last
        shard of a condition may be short).
        """
        array = zarr.open_array(self.root / "tiles", mode="r")
        shard = array.shards[1]
        if first_tile % shard or (len(tiles) != shard and first_tile + len(tiles) != array.shape[1]):
            raise ValueError(f"tiles {first_tile}..{first_tile + len(tiles)} are not one whole shard of {shard}")
        write_shard(self.root / "tiles", array, (condition_index, first_tile // shard), tiles)


def open_aligned_store(path: Path | str) -> AlignedTileStore:
    """The store at ``path``, checked to be an aligned tile store."""
    store = AlignedTileStore(path)
    if store.read_attributes() is None:
        raise StoreError(f"{store.root} is not a distillpath aligned tile store")
    return store


def condition_records(store: AlignedTileStore) -> dict[str, SlideRecord]:
    """The latest record of every condition the store knows, by name."""
    records = {}
    if store.status_dir.is_dir():
        for folder in sorted(store.status_dir.iterdir()):
            record = read_record(store, folder.name)
            if record is not None:
                records[folder.name] = record
    return records


def open_aligned_tiles(path: Path | str):
    """The store as a lazy xarray Dataset ``[condition, tile, …]``, dask chunks = shards (when dask is installed).

    Coordinates ``condition`` (names), ``staining``, ``scanner``, ``mpp_um``;
    variable ``extracted`` ``[condition]`` says which conditions' tiles are
    complete (the others read as zeros).
    """
    import xarray as xr

    from storage.lazy_arrays import zarr_variable

    store = open_aligned_store(path)
    plan = store.read_plan()
    if plan is None:
        raise StoreError(f"{store.root} has no tiles yet: its registration or planning has not finished")
    group = zarr.open_group(store.root, mode="r")
    tiles = group["tiles"]
    table = plan["table"]
    return xr.Dataset(
        {
            "tiles": (tiles.metadata.dimension_names, zarr_variable(tiles, chunks=tiles.shards)),
            "coords": (("condition", "tile", "xy"), zarr_variable(group["coords"])),
            "tissue_fraction": (("condition", "tile"), zarr_variable(group["tissue_fraction"])),
            "grid": (("tile", "colrow"), zarr_variable(group["grid"])),
            "extracted": (("condition",), np.array([store.is_extracted(row["name"]) for row in table])),
        },
        coords={
            "condition": [row["name"] for row in table],
            "staining": ("condition", [row["staining"] for row in table]),
            "scanner": ("condition", [row["scanner"] for row in table]),
            "mpp_um": ("condition", [row["mpp_um"] for row in table]),
            "xy": ["x", "y"],
            "colrow": ["col", "row"],
        },
        attrs={
            "store": str(store.root),
            "reference": table[0]["name"],
            "mpp_um": plan["mpp_um"],
            "excluded": plan["excluded"],
        },
    )
