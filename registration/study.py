"""One study's work, condition by condition: register, measure where the tiles fall, extract them.

Each function does one condition's share and records its outcome in the
aligned tile store, so a flow can run the conditions in parallel, resume a
killed run, and report failures per condition. They need no Prefect: an
analyst can call them directly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registration.aligned_tiles import (
    IdentityMapping,
    PointMapping,
    ReferenceTiles,
    extract_tiles,
    map_tiles,
    tissue_under_tiles,
)
from registration.config import RefinementConfig, RegistrationConfig
from registration.errors import RegistrationError
from registration.layout import PlismCondition
from registration.register import register_slides
from registration.result import RegistrationResult
from storage.aligned_store import EXTRACTED, REGISTERED, AlignedTileStore
from storage.atomic import replace_folder_atomic, write_bytes_atomic
from storage.manifest import SlideRecord, failed_record, write_record
from storage.tile_store import utc_now
from tiling.config import TilingConfig
from tiling.errors import SlideError


def _failure(condition: PlismCondition, stage: str, error: Exception, started: float) -> SlideRecord:
    return failed_record(
        condition.name,
        condition.path,
        error,
        seconds=round(time.perf_counter() - started, 3),
        finished_at=utc_now(),
        extra={"stage": stage},
    )


def register_condition(
    store: AlignedTileStore,
    reference: PlismCondition,
    condition: PlismCondition,
    config: RegistrationConfig,
    refinement: RefinementConfig | None,
    anchor_points_xy: np.ndarray,
) -> SlideRecord:
    """Register ``condition`` to ``reference`` (then refine it near ``anchor_points_xy`` with ``refinement``
    unless it is ``None``) and publish the transform.

    A slide that cannot be read or registered gives a ``failed`` record and,
    when one could be drawn, its QC picture; nothing is published.
    """
    started = time.perf_counter()
    staging = store.new_staging_path(condition.name)
    try:
        result = register_slides(reference.path, condition.path, config)
        mapping = result
        if refinement is not None:
            from registration.refine import refine_registration  # OpenCV: only when refining

            mapping = refine_registration(result, anchor_points_xy, refinement)
        mapping.save(staging)
        write_bytes_atomic(store.qc_path(condition.name), result.qc_png)
        replace_folder_atomic(staging, store.registration_path(condition.name))  # a redo: never absent
    except (RegistrationError, SlideError) as error:
        if isinstance(error, RegistrationError) and error.qc_png is not None:
            write_bytes_atomic(store.qc_path(condition.name), error.qc_png)
        record = _failure(condition, "register", error, started)
        write_record(store, record)
        return record
    record = SlideRecord(
        slide_id=condition.name,
        source_path=str(condition.path),
        status=REGISTERED,
        seconds=round(time.perf_counter() - started, 3),
        finished_at=utc_now(),
        extra={"stage": "register", "quality": result.quality.as_dict(), "refined": refinement is not None},
    )
    write_record(store, record)
    return record


def load_mapping(store: AlignedTileStore, condition: str, *, is_reference: bool) -> PointMapping:
    """The reference → ``condition`` mapping the store holds (refined when it was refined)."""
    if is_reference:
        return IdentityMapping()
    folder = store.registration_path(condition)
    if (folder / "refinement.json").is_file():
        from registration.refine import RefinedRegistration

        return RefinedRegistration.load(folder)
    return RegistrationResult.load(folder)


@dataclass(frozen=True)
class Footprint:
    """Where the reference tiles fall on one condition: top-left corners ``[N, 2]`` (level-0 px),
    tissue fraction ``[N]`` and whether each tile lies wholly on the slide ``[N]``.
    """

    top_left_xy: np.ndarray
    tissue_fraction: np.ndarray
    inside: np.ndarray


def measure_footprint(
    store: AlignedTileStore,
    condition: PlismCondition,
    tiles: ReferenceTiles,
    *,
    is_reference: bool,
    nodes_per_side: int,
    tiling: TilingConfig,
) -> Footprint:
    """Map every candidate tile onto ``condition`` and measure the tissue under it there."""
    mapping = load_mapping(store, condition.name, is_reference=is_reference)
    top_left, nodes = map_tiles(mapping, tiles, nodes_per_side)
    fraction, inside = tissue_under_tiles(condition.path, condition.mpp_um, nodes, tiling.tissue)
    return Footprint(top_left, fraction, inside)


def tiles_on_tissue_everywhere(footprints: list[Footprint], min_tissue_fraction: float) -> np.ndarray:
    """``[N]`` bool: the tiles that lie on every condition's slide, on tissue in each."""
    keep = np.ones(len(footprints[0].inside), dtype=bool)
    for footprint in footprints:
        keep &= footprint.inside & (footprint.tissue_fraction >= min_tissue_fraction)
    return keep


def extract_condition(
    store: AlignedTileStore,
    condition: PlismCondition,
    index: int,
    tiles: ReferenceTiles,
    *,
    is_reference: bool,
    nodes_per_side: int,
    tiling: TilingConfig,
) -> SlideRecord:
    """Resample the planned ``tiles`` from ``condition`` into row ``index`` of the store's arrays."""
    started = time.perf_counter()
    plan = store.read_plan()
    mapping = load_mapping(store, condition.name, is_reference=is_reference)
    try:
        _, nodes = map_tiles(mapping, tiles, nodes_per_side)
        shard = plan["tiles_per_shard"]
        batches = extract_tiles(
            condition.path,
            condition.mpp_um,
            nodes,
            tiles.tile_size_px,
            tiles.mpp_um,
            batch_size=shard,
            threads=tiling.threads,
        )
        for number, batch in enumerate(batches):
            store.write_condition_tiles(index, number * shard, batch)
    except SlideError as error:
        record = _failure(condition, "extract", error, started)
        write_record(store, record)
        return record
    record = SlideRecord(
        slide_id=condition.name,
        source_path=str(condition.path),
        status=EXTRACTED,
        n_tiles=len(tiles),
        seconds=round(time.perf_counter() - started, 3),
        finished_at=utc_now(),
        extra={"stage": "extract", "plan_id": plan["plan_id"]},
    )
    write_record(store, record)
    return record


def condition_row(store: AlignedTileStore, condition: PlismCondition, *, is_reference: bool) -> dict:
    """The condition's row of the store's condition table, with its registration quality figures."""
    quality = {}
    if not is_reference:
        quality = json.loads((store.registration_path(condition.name) / "registration.json").read_text())["quality"]
    return {
        "name": condition.name,
        "staining": condition.staining,
        "scanner": condition.scanner,
        "path": str(Path(condition.path).resolve()),
        "mpp_um": condition.mpp_um,
        "reference": is_reference,
        **quality,
    }
