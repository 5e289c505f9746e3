"""The PLISM flow: register every condition to the reference, then cut the same tiles from all of them.

Stages, each one Prefect task per condition, in parallel on the task runner:

1. **register** every condition not yet registered (failures are recorded with a QC picture and
   retried by the next run; they never stop the others);
2. **measure** where the reference's tissue tiles fall on each registered condition;
3. **plan** (in the flow): keep the tiles that lie on tissue in every condition, create the arrays;
4. **extract** each condition's tiles not yet written under the current plan.

A rerun skips what is done. If the set of registered conditions changed (a
condition that failed now registers), the tiles are planned and extracted
anew, so every condition always has the same tiles. The command lines are
:mod:`flows.register_plism` and :mod:`flows.extract_plism`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from tqdm import tqdm

from flows.jobs import NODES_PER_SIDE, plism_store_parameters
from flows.runners import is_transient_io_error
from flows.submission import as_completed_bounded, dask_client_of_flow, outcomes, window_for
from registration.aligned_tiles import ReferenceTiles, reference_tiles
from registration.config import RefinementConfig, RegistrationConfig
from registration.layout import DEFAULT_PATTERN, DEFAULT_REFERENCE, PlismCondition, PlismLayout
from registration.qc import render_tile_montage
from registration.study import (
    Footprint,
    condition_row,
    extract_condition,
    measure_footprint,
    register_condition,
    tiles_on_tissue_everywhere,
)
from storage.aligned_store import REGISTERED, AlignedTileStore
from storage.atomic import write_bytes_atomic
from storage.manifest import FAILED, SlideRecord, failed_record, write_record
from storage.tile_store import utc_now
from tiling.config import TilingConfig
from tiling.errors import MissingMppError

Stage = Literal["register", "all"]
_MONTAGE_TILES = 6


_TASK_OPTIONS = {
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": is_transient_io_error,
    "cache_policy": None,
}


@task(name="register-condition", task_run_name="register-{condition.name}", **_TASK_OPTIONS)
def register_task(
    condition: PlismCondition,
    store_root: str,
    reference: PlismCondition,
    config: RegistrationConfig,
    refinement: RefinementConfig | None,
    anchors_xy: np.ndarray,
) -> SlideRecord:
    return register_condition(AlignedTileStore(store_root), reference, condition, config, refinement, anchors_xy)


@task(name="measure-footprint", task_run_name="measure-{condition.name}", **_TASK_OPTIONS)
def footprint_task(
    condition: PlismCondition,
    store_root: str,
    reference_name: str,
    tiles: ReferenceTiles,
    nodes_per_side: int,
    tiling: TilingConfig,
) -> Footprint:
    return measure_footprint(
        AlignedTileStore(store_root),
        condition,
        tiles,
        is_reference=condition.name == reference_name,
        nodes_per_side=nodes_per_side,
        tiling=tiling,
    )


@task(name="extract-condition", task_run_name="extract-{condition.name}", **_TASK_OPTIONS)
def extract_task(
    condition: PlismCondition,
    index: int,
    store_root: str,
    reference_name: str,
    tiles: ReferenceTiles,
    nodes_per_side: int,
    tiling: TilingConfig,
) -> SlideRecord:
    return extract_condition(
        AlignedTileStore(store_root),
        condition,
        index,
        tiles,
        is_reference=condition.name == reference_name,
        nodes_per_side=nodes_per_side,
        tiling=tiling,
    )


def _run_per_condition(
    submit: Callable[[PlismCondition], Any],
    conditions: Sequence[PlismCondition],
    label: str,
    progress_bar: bool,
    on_error: Callable[[PlismCondition, Exception], object],
) -> list:
    """Run one task per condition, a window at a time; a task that raised becomes ``on_error``'s value.

    Each result is taken and its future dropped as it arrives (see
    :mod:`flows.submission`), so a lost worker does not hold finished
    registrations that Dask would then compute again.
    """
    results: list = [None] * len(conditions)
    finished = as_completed_bounded(
        lambda i: submit(conditions[i]), range(len(conditions)), window_for(dask_client_of_flow())
    )
    with tqdm(total=len(conditions), unit="condition", desc=label, disable=not progress_bar, file=sys.stderr) as bar:
        for i, result in outcomes(finished, lambda i, error: on_error(conditions[i], error)):
            results[i] = result
            bar.update(1)
    return results


def _crash_record(store: AlignedTileStore, stage: str) -> Callable[[PlismCondition, Exception], SlideRecord]:
    def record(condition: PlismCondition, error: Exception) -> SlideRecord:
        failed = failed_record(
            condition.name, condition.path, error, unexpected=True, finished_at=utc_now(), extra={"stage": stage}
        )
        write_record(store, failed)
        return failed

    return record


def _planned_tiles(store: AlignedTileStore, tiles: ReferenceTiles) -> ReferenceTiles:
    """The reference tiles of the store's current plan (row 0 of ``coords`` is the reference itself)."""
    import zarr

    group = zarr.open_group(store.root, mode="r")
    return ReferenceTiles(
        group["coords"][0], group["grid"][...], tiles.tile_size_level0, tiles.tile_size_px, tiles.mpp_um
    )


def _summary_markdown(records: dict[str, SlideRecord], plan: dict | None) -> str:
    rows = ["| condition | status | stage | seconds | error |", "|---|---|---|---|---|"]
    for name, record in sorted(records.items()):
        error = record.error.replace("|", "/").replace("\n", " ")[:200]
        rows.append(f"| {name} | {record.status} | {record.extra.get('stage', '')} | {record.seconds} | {error} |")
    if plan is not None:
        rows.insert(0, f"{plan['n_tiles']} tiles x {len(plan['conditions'])} conditions\n")
    return "\n".join(rows)


@flow(name="plism", log_prints=True)
def plism(
    slides: str,
    out: str,
    registration: RegistrationConfig = RegistrationConfig(),
    tiling: TilingConfig = TilingConfig(),
    refinement: RefinementConfig | None = None,
    pattern: str = DEFAULT_PATTERN,
    reference: tuple[str, str] = DEFAULT_REFERENCE,
    stainings: list[str] | None = None,
    nodes_per_side: int = NODES_PER_SIDE,
    stage: Stage = "all",
    overwrite: bool = False,
    progress_bar: bool = False,
) -> dict:
    """Register the conditions in folder ``slides`` and (``stage="all"``) extract their aligned tiles into ``out``.

    ``refinement`` (:class:`~registration.config.RefinementConfig`) refines
    each registration around the tiles; ``None`` skips it. Returns ``{condition: status}`` and the tile count.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    layout = PlismLayout.from_folder(
        slides, pattern=pattern, reference=tuple(reference), stainings=tuple(stainings) if stainings else None
    )
    ref = layout.reference
    if ref.mpp_um is None:
        raise MissingMppError(ref.path, "the reference slide records no pixel size")
    for path in layout.unmatched:
        logger.warning("ignored %s: its name does not match %r", path.name, pattern)
    if layout.missing:
        logger.warning("no slide for %s", ", ".join(layout.missing))
    parameters = plism_store_parameters(ref.name, pattern, stainings, registration, refinement, tiling, nodes_per_side)
    store = AlignedTileStore.create_or_open(out, parameters, overwrite=overwrite)
    store.acquire_run_lock()
    records: dict[str, SlideRecord] = {}
    plan = None
    try:
        store.remove_staging_debris()
        tiles = reference_tiles(ref.path, ref.mpp_um, tiling)
        logger.info("%d conditions; reference %s has %d tissue tiles", len(layout.conditions), ref.name, len(tiles))
        records[ref.name] = SlideRecord(
            slide_id=ref.name,
            source_path=str(ref.path),
            status=REGISTERED,
            finished_at=utc_now(),
            extra={"stage": "reference"},
        )
        todo = [c for c in layout.moving if not store.is_registered(c.name)]
        anchors = tiles.centres()
        logger.info("register: %d to do, %d already registered", len(todo), len(layout.moving) - len(todo))
        registered_now = _run_per_condition(
            lambda condition: register_task.submit(
                condition,
                store_root=str(store.root),
                reference=ref,
                config=registration,
                refinement=refinement,
                anchors_xy=anchors,
            ),
            todo,
            "register",
            progress_bar,
            _crash_record(store, "register"),
        )
        for condition, record in zip(todo, registered_now, strict=True):
            records[condition.name] = record
            if record.status == FAILED:
                logger.warning("%s could not be registered: %s", condition.name, record.error)
        conditions = [ref, *(c for c in layout.moving if store.is_registered(c.name))]
        excluded = {c.name: records[c.name].error for c in layout.moving if not store.is_registered(c.name)}
        if stage == "all":
            plan = _plan(store, conditions, excluded, tiles, nodes_per_side, tiling, progress_bar, logger)
            planned = _planned_tiles(store, tiles)
            todo_extract = [(i, c) for i, c in enumerate(conditions) if not store.is_extracted(c.name)]
            row_of = {c.name: i for i, c in todo_extract}
            logger.info("extract: %d conditions to do, %d tiles each", len(todo_extract), len(planned))
            extracted = _run_per_condition(
                lambda condition: extract_task.submit(
                    condition,
                    row_of[condition.name],
                    store_root=str(store.root),
                    reference_name=ref.name,
                    tiles=planned,
                    nodes_per_side=nodes_per_side,
                    tiling=tiling,
                ),
                [c for _, c in todo_extract],
                "extract",
                progress_bar,
                _crash_record(store, "extract"),
            )
            for (_, condition), record in zip(todo_extract, extracted, strict=True):
                records[condition.name] = record
            _write_montage(store, plan)
    finally:
        store.release_run_lock()
    statuses = {name: record.status for name, record in records.items()}
    create_markdown_artifact(
        _summary_markdown(records, plan), key="plism-summary", description=f"PLISM into {store.root}"
    )
    print(
        f"{len(statuses)} conditions in {time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{name} {status}" for name, status in sorted(statuses.items()))
    )
    return {"conditions": statuses, "n_tiles": plan["n_tiles"] if plan else None}


def _plan(
    store: AlignedTileStore,
    conditions: list[PlismCondition],
    excluded: dict[str, str],
    tiles: ReferenceTiles,
    nodes_per_side: int,
    tiling: TilingConfig,
    progress_bar: bool,
    logger,
) -> dict:
    """Reuse the store's plan if it covers exactly ``conditions``, else measure every footprint and plan anew."""
    names = [c.name for c in conditions]
    plan = store.read_plan()
    if plan is not None and plan["conditions"] == names:
        return plan
    if plan is not None:
        logger.warning(
            "registered conditions changed from %s to %s: planning and extracting all tiles again",
            plan["conditions"],
            names,
        )
    footprints = _run_per_condition(
        lambda condition: footprint_task.submit(
            condition,
            store_root=str(store.root),
            reference_name=names[0],
            tiles=tiles,
            nodes_per_side=nodes_per_side,
            tiling=tiling,
        ),
        conditions,
        "measure",
        progress_bar,
        lambda condition, error: error,
    )
    failures = [(c.name, f) for c, f in zip(conditions, footprints, strict=True) if isinstance(f, Exception)]
    if failures:
        raise RuntimeError("could not map the tiles onto " + "; ".join(f"{n}: {e}" for n, e in failures))
    keep = tiles_on_tissue_everywhere(footprints, tiling.qc.min_tissue_fraction)
    logger.info("%d of %d reference tiles lie on tissue in all %d conditions", keep.sum(), len(keep), len(conditions))
    return store.start_plan(
        [condition_row(store, c, is_reference=i == 0) for i, c in enumerate(conditions)],
        excluded,
        np.stack([f.top_left_xy[keep] for f in footprints]),
        np.stack([f.tissue_fraction[keep] for f in footprints]),
        tiles.grid[keep],
        tile_size_px=tiles.tile_size_px,
        mpp_um=tiles.mpp_um,
        tiles_per_shard=tiling.tiles_per_shard,
        jpeg_quality=tiling.jpeg_quality,
        jpeg_subsampling=tiling.jpeg_subsampling,
    )


def _write_montage(store: AlignedTileStore, plan: dict) -> None:
    """``qc/aligned_tiles.png``: a few tiles spread over the slide, one row per extracted condition."""
    import zarr

    if plan["n_tiles"] == 0:
        return
    rows = [i for i, name in enumerate(plan["conditions"]) if store.is_extracted(name)]
    picks = np.unique(np.linspace(0, plan["n_tiles"] - 1, _MONTAGE_TILES).round().astype(int))
    tiles = zarr.open_array(store.root / "tiles", mode="r").get_orthogonal_selection((rows, picks))
    names = [plan["conditions"][i] for i in rows]
    write_bytes_atomic(store.qc_path("aligned_tiles"), render_tile_montage(tiles, names))
