"""Stream one slide's tiles into its staging group, whole shards at a time.

Writing part of a zarr shard makes zarr read, merge and rewrite the whole
shard file; writing whole shards lets it encode every chunk once and write
each file once. The writer therefore buffers ``tiles_per_shard`` tiles (about
300 MB for 2,048 tiles of 224 px) and flushes full shards; only the last,
partial shard is written short. Shard files are laid out by
:mod:`storage.shard_file`, byte for byte as zarr would, at a third of the cost.
"""

from __future__ import annotations

import shutil

import numpy as np
import zarr

from storage.jpeg_codec import JpegCodec
from storage.shard_file import jpeg_codec_of, write_shard
from storage.tile_store import TileStore


class SlideWriter:
    """Write one slide into ``store``'s staging area, then publish it.

    Parameters
    ----------
    store
        The tile store.
    slide_id
        Safe, unique id of the slide (already validated).
    capacity
        Upper bound on the number of tiles (the grid cells kept before QC).
    tile_size_px, tiles_per_shard, jpeg_quality, jpeg_subsampling
        Array layout.
    """

    def __init__(
        self,
        store: TileStore,
        slide_id: str,
        *,
        capacity: int,
        tile_size_px: int,
        tiles_per_shard: int,
        jpeg_quality: int,
        jpeg_subsampling: str,
    ) -> None:
        self.store = store
        self.slide_id = slide_id
        self.path = store.new_staging_path(slide_id)
        self.group = zarr.open_group(self.path, mode="w")
        shard = max(1, min(tiles_per_shard, capacity))
        tile_shape = (tile_size_px, tile_size_px, 3)
        self.tiles = self.group.create_array(
            "tiles",
            shape=(capacity, *tile_shape),
            chunks=(1, *tile_shape),
            shards=(shard, *tile_shape),
            dtype="uint8",
            serializer=JpegCodec(quality=jpeg_quality, subsampling=jpeg_subsampling),
            compressors=None,
            fill_value=0,
            dimension_names=("tile", "y", "x", "channel"),
        )
        jpeg_codec_of(self.tiles)  # fail now, not after reading a slide, if zarr's layout ever changes
        self._buffer = np.empty((shard, *tile_shape), dtype=np.uint8)
        self._buffered = 0
        self.written = 0

    def append(self, tiles: np.ndarray) -> None:
        """Add ``[n, H, W, 3]`` tiles in order; full shards are written immediately."""
        offset = 0
        while offset < len(tiles):
            take = min(len(tiles) - offset, len(self._buffer) - self._buffered)
            self._buffer[self._buffered : self._buffered + take] = tiles[offset : offset + take]
            self._buffered += take
            offset += take
            if self._buffered == len(self._buffer):
                self._flush()

    def _flush(self) -> None:
        if self._buffered:
            shard_index = self.written // len(self._buffer)  # flushes happen on shard boundaries only
            write_shard(self.path / "tiles", self.tiles, shard_index, self._buffer[: self._buffered])
            self.written += self._buffered
            self._buffered = 0

    def finish(
        self,
        coords_level0: np.ndarray,
        tissue_fraction: np.ndarray,
        tissue_mask: np.ndarray,
        tissue_mask_mpp_um: float,
        attributes: dict,
    ) -> bool:
        """Write the last shard and the per-tile arrays, then publish the slide atomically.

        Returns False when the slide was already published (by a duplicate
        task): that copy is kept and this one deleted.
        """
        self._flush()
        if len(coords_level0) != self.written or len(tissue_fraction) != self.written:
            raise ValueError(
                f"{self.slide_id}: {self.written} tiles but {len(coords_level0)} coordinates "
                f"and {len(tissue_fraction)} tissue fractions"
            )
        self.tiles.resize((self.written, *self.tiles.shape[1:]))
        coords = self.group.create_array(
            "coords",
            shape=coords_level0.shape,
            dtype="int64",
            chunks=(max(1, len(coords_level0)), 2),
            dimension_names=("tile", "xy"),
        )
        coords[...] = coords_level0
        coords.attrs.update({"frame": "level-0 pixels", "columns": ["x", "y"], "corner": "top-left"})
        fractions = self.group.create_array(
            "tissue_fraction",
            shape=tissue_fraction.shape,
            dtype="float32",
            chunks=(max(1, len(tissue_fraction)),),
            dimension_names=("tile",),
        )
        fractions[...] = tissue_fraction
        mask = self.group.create_array(
            "tissue_mask",
            shape=tissue_mask.shape,
            dtype="uint8",
            chunks=tissue_mask.shape,
            dimension_names=("mask_y", "mask_x"),
        )
        mask[...] = tissue_mask.astype(np.uint8)
        mask.attrs.update({"mpp_um": tissue_mask_mpp_um, "frame": "slide scaled to mpp_um, origin at level-0 (0, 0)"})
        self.group.attrs.update({**attributes, "n_tiles": self.written})
        return self.store.publish(self.path, self.slide_id)

    def abort(self) -> None:
        """Remove the staging group of a slide that failed."""
        shutil.rmtree(self.path, ignore_errors=True)
