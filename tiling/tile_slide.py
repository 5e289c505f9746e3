"""Tile one slide into the store, from file to published group and status record.

This is the unit of work a run distributes. It never raises for a bad slide:
it returns a ``failed`` record with the reason. Only transient I/O errors
(an ``OSError`` that is not about the slide's content) propagate, so the
caller can retry them. It is idempotent: a slide already complete in the store
is returned as it is, so a task that a scheduler runs again (its worker was
lost, preempted or killed at its walltime) costs one ``stat``, not a re-tiling.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.atomic import write_bytes_atomic
from storage.checksum import sha256_of_file
from storage.jpeg_codec import set_coding_threads
from storage.manifest import DONE, SKIPPED, SlideRecord, failed_record, read_record, write_record
from storage.slide_writer import SlideWriter
from storage.tile_store import TileStore, software_version, utc_now
from tiling.config import TilingConfig
from tiling.errors import MissingMppError, SlideError
from tiling.grid import TileGrid, level0_coordinates, plan_grid
from tiling.preview import slide_qc_picture
from tiling.resolution import ResolutionPlan, format_mpp, plan_resolution
from tiling.slide import SlideBackend, header_attributes, opened_slide
from tiling.slide_list import SlideSpec
from tiling.tile_reader import iter_tile_batches
from tiling.tissue import Thumbnail, detect_tissue, read_thumbnail


def _resolve_mpp(spec: SlideSpec, backend: SlideBackend) -> tuple[float, str, str]:
    """The level-0 pixel size to tile with, where it came from, and a note when a recorded value was replaced.

    ``mpp_override_um`` only fills in a missing value; replacing what the file
    records takes ``mpp_replace_um``, and the note names both values.
    """
    recorded = backend.mpp_um
    if spec.mpp_replace_um is not None:
        if recorded is None:
            return spec.mpp_replace_um, "replacement", ""
        note = (
            f"pixel size replaced: the file records {format_mpp(recorded)}, tiled as {format_mpp(spec.mpp_replace_um)}"
        )
        return spec.mpp_replace_um, "replacement", note
    if recorded is not None:
        return recorded, "file", ""
    if spec.mpp_override_um is not None:
        return spec.mpp_override_um, "override", ""
    raise MissingMppError(
        spec.path,
        "no pixel size (mpp) in the slide's metadata; give one with --mpp-override or an 'mpp' column in the slide CSV",
    )


def _write_tiles(
    writer: SlideWriter, backend: SlideBackend, plan: ResolutionPlan, grid: TileGrid, config: TilingConfig
) -> tuple[np.ndarray, dict[str, int]]:
    """Stream the grid's tiles into ``writer``; return the grid positions kept and QC rejection counts."""
    kept: list[np.ndarray] = []
    rejected: Counter = Counter()
    for batch in iter_tile_batches(
        backend, plan, grid, config.qc, block_tiles=config.read_block_tiles, threads=config.threads
    ):
        writer.append(batch.tiles)
        kept.append(batch.grid_index)
        rejected.update(batch.rejected)
    return (np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)), dict(rejected)


@dataclass(frozen=True)
class TilePlan:
    """Where a slide's tiles are: resolution plan, thumbnail, tissue mask and the grid cells on tissue."""

    resolution: ResolutionPlan
    thumbnail: Thumbnail
    mask: np.ndarray
    grid: TileGrid

    @property
    def coordinates(self) -> np.ndarray:
        """Top-left level-0 ``(x, y)`` of every grid cell on tissue, ``[N, 2]`` int64."""
        return level0_coordinates(self.grid, self.resolution)


def plan_tiles(path: Path, backend: SlideBackend, mpp_um: float, config: TilingConfig) -> TilePlan:
    """Lay the tile grid of ``config`` over the slide's tissue, before any tile is read.

    Raises
    ------
    ResolutionTooLowError
        When the slide is coarser than the target and upsampling is not allowed.
    """
    plan = plan_resolution(
        path,
        mpp_um,
        backend.level_downsamples,
        target_mpp_um=config.target_mpp_um,
        tile_size_px=config.tile_size_px,
        mpp_tolerance=config.mpp_tolerance,
        allow_upsampling=config.allow_upsampling,
    )
    thumbnail = read_thumbnail(backend, mpp_um, config.tissue.mask_mpp_um)
    mask = detect_tissue(thumbnail, config.tissue)
    grid = plan_grid(
        backend.level_dimensions[plan.level],
        plan,
        mask,
        thumbnail.mpp_um,
        config.qc.min_tissue_fraction,
        config.read_block_tiles,
    )
    return TilePlan(plan, thumbnail, mask, grid)


def _tile_open_slide(spec: SlideSpec, backend: SlideBackend, store: TileStore, config: TilingConfig) -> SlideRecord:
    started = time.perf_counter()
    mpp_um, mpp_source, mpp_note = _resolve_mpp(spec, backend)
    tile_plan = plan_tiles(spec.path, backend, mpp_um, config)
    plan, thumbnail, mask, grid = tile_plan.resolution, tile_plan.thumbnail, tile_plan.mask, tile_plan.grid
    writer = SlideWriter(
        store,
        spec.slide_id,
        capacity=len(grid),
        tile_size_px=config.tile_size_px,
        tiles_per_shard=config.tiles_per_shard,
        jpeg_quality=config.jpeg_quality,
        jpeg_subsampling=config.jpeg_subsampling,
    )
    # Hashing a multi-GB slide takes seconds; hashlib releases the GIL, so it overlaps the tiling.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="checksum") as hasher:
        checksum = hasher.submit(sha256_of_file, spec.path) if config.checksum else None
        try:
            index, rejected = _write_tiles(writer, backend, plan, grid, config)
            coords = tile_plan.coordinates[index]
            attributes = {
                "slide_id": spec.slide_id,
                "source_path": str(spec.path.resolve()),
                "source_size_bytes": spec.path.stat().st_size,
                "source_sha256": checksum.result() if checksum else None,
                **header_attributes(backend),
                "mpp_source": mpp_source,
                "mpp_level0_um": mpp_um,
                "mpp_recorded_um": backend.mpp_um,
                "resolution": plan.as_dict(),
                "grid_shape": list(grid.shape),
                "n_candidates": len(grid),
                "n_rejected": rejected,
                "tiling": config.model_dump(),
                "software_version": software_version(),
                "created_at": utc_now(),
                "seconds": round(time.perf_counter() - started, 3),
            }
            picture = slide_qc_picture(backend, spec.slide_id, mpp_um, tile_plan, index, config.tile_size_px)
            write_bytes_atomic(store.qc_path(spec.slide_id), picture)
            writer.finish(coords, grid.tissue_fraction[index], mask, thumbnail.mpp_um, attributes)
        except BaseException:
            writer.abort()
            raise
    message = "no tissue found" if len(grid) == 0 else ""
    if plan.upsampled:
        message = f"upsampled from {format_mpp(plan.level_mpp_um)}"
    message = "; ".join(m for m in (mpp_note, message) if m)
    return SlideRecord(
        slide_id=spec.slide_id,
        source_path=str(spec.path),
        status=DONE,
        n_tiles=writer.written,
        message=message,
        extra={
            "effective_mpp_um": plan.effective_mpp_um,
            "level": plan.level,
            "mpp_level0_um": mpp_um,
            "mpp_recorded_um": backend.mpp_um,
        },
    )


def _record_of_complete_slide(spec: SlideSpec, store: TileStore) -> SlideRecord:
    """The stored ``done`` record of a slide already in the store, or ``skipped`` if it has none.

    The record is missing when a run was killed between publishing the slide
    and writing its record; the slide itself is whole either way.
    """
    record = read_record(store, spec.slide_id)
    if record is not None and record.status == DONE:
        return record
    return SlideRecord(slide_id=spec.slide_id, source_path=str(spec.path), status=SKIPPED)


def tile_slide(spec: SlideSpec, store: TileStore, config: TilingConfig) -> SlideRecord:
    """Tile ``spec`` into ``store`` and record the outcome; bad slides give a ``failed`` record.

    A slide already complete in ``store`` is not read nor written again: its
    stored record is returned (delete the slide, or the store with
    ``--overwrite``, to redo it).

    Raises
    ------
    OSError
        For I/O errors not attributable to the slide (disk full, network
        file system hiccups): the caller may retry the slide.
    """
    if store.is_complete(spec.slide_id):
        return _record_of_complete_slide(spec, store)
    started = time.perf_counter()
    set_coding_threads(config.threads)  # encoding, like reading, stays within the slide's --threads
    try:
        with opened_slide(spec.path) as backend:
            record = _tile_open_slide(spec, backend, store, config)
    except SlideError as error:
        record = failed_record(spec.slide_id, spec.path, error)
    record.seconds = round(time.perf_counter() - started, 3)
    record.finished_at = utc_now()
    write_record(store, record)
    return record
