"""The tiling flow: one Prefect task per slide, into one tile store.

Where the tasks run is the caller's choice of task runner (see
:mod:`flows.runners`); the command line is :mod:`flows.tile_tcga`. A bad slide
is a ``failed`` row in the manifest and the summary, never a failed run.
"""

from __future__ import annotations

import hashlib
import sys
import time

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from tqdm import tqdm

from flows.runners import is_transient_io_error
from flows.summary import RunSummary
from storage.manifest import FAILED, REJECTED_PREFIX, SKIPPED, SlideRecord, clear_rejected_records, write_record
from storage.tile_store import TileStore, utc_now
from tiling.config import TilingConfig
from tiling.slide_list import RejectedSlide, SlideSpec, list_slides
from tiling.tile_slide import tile_slide


@task(
    name="tile-slide",
    task_run_name="tile-{spec.slide_id}",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=is_transient_io_error,
    cache_policy=None,
    log_prints=False,
)
def tile_slide_task(spec: SlideSpec, store_root: str, config: TilingConfig) -> SlideRecord:
    return tile_slide(spec, TileStore(store_root), config)


def _record_rejected(store: TileStore, rejected: RejectedSlide) -> SlideRecord:
    """Persist a refused slide-list row under a safe key derived from its row and path."""
    key = f"{REJECTED_PREFIX}{rejected.row}-" + hashlib.sha1(str(rejected.path).encode()).hexdigest()[:12]
    record = SlideRecord(
        slide_id=key, source_path=str(rejected.path), status=FAILED, error=str(rejected.error),
        error_type=type(rejected.error).__name__, finished_at=utc_now(),
        extra={"requested_slide_id": rejected.slide_id, "row": rejected.row},
    )
    write_record(store, record)
    return record


@flow(name="tile-tcga", log_prints=True)
def tile_tcga(
    slides: str,
    out: str,
    config: TilingConfig = TilingConfig(),
    mpp_override_um: float | None = None,
    mpp_replace_um: float | None = None,
    overwrite: bool = False,
    progress_bar: bool = False,
) -> dict:
    """Tile every slide of ``slides`` (folder or CSV) into the store ``out``; return the summary."""
    logger = get_run_logger()
    specs, rejected = list_slides(slides, mpp_override_um, mpp_replace_um)
    store = TileStore.create_or_open(out, config.model_dump(), overwrite=overwrite)
    store.acquire_run_lock()
    try:
        store.remove_staging_debris()
        clear_rejected_records(store)  # rows refused last time and fixed since must leave the manifest
        summary = RunSummary(started=time.perf_counter())
        for row in rejected:
            logger.error("refused: %s", row.error)
            summary.add(_record_rejected(store, row))
        todo = []
        for spec in specs:
            if store.is_complete(spec.slide_id):
                summary.add(SlideRecord(slide_id=spec.slide_id, source_path=str(spec.path), status=SKIPPED))
            else:
                todo.append(spec)
        logger.info("%d slides listed: %d to tile, %d already complete, %d refused",
                    len(specs) + len(rejected), len(todo), summary.count(SKIPPED), len(rejected))
        progress_id = create_progress_artifact(progress=0.0, key="tile-tcga-progress", description="slides tiled")
        futures = tile_slide_task.map(todo, store_root=unmapped(str(store.root)), config=unmapped(config))
        spec_of_future = {id(future): spec for future, spec in zip(futures, todo)}
        bar = tqdm(total=len(todo), unit="slide", disable=not progress_bar, file=sys.stderr)
        for finished, future in enumerate(as_completed(futures), start=1):
            spec = spec_of_future[id(future)]
            try:
                record = future.result()
            except Exception as error:  # retries exhausted: record it and go on with the others
                record = SlideRecord(
                    slide_id=spec.slide_id, source_path=str(spec.path), status=FAILED,
                    error=f"{type(error).__name__}: {error}", error_type=type(error).__name__, finished_at=utc_now(),
                )
                write_record(store, record)
            summary.add(record)
            if record.status == FAILED:
                logger.warning("%s failed: %s", record.slide_id, record.error)
            else:
                logger.info("%s: %d tiles in %.1f s%s", record.slide_id, record.n_tiles, record.seconds,
                            f" ({record.message})" if record.message else "")
            bar.update(1)
            bar.set_postfix(tiles=summary.tiles, failed=summary.count(FAILED))
            update_progress_artifact(progress_id, 100.0 * finished / max(1, len(todo)))
        bar.close()
    finally:
        store.release_run_lock()
    summary.finish()
    create_markdown_artifact(summary.to_markdown(), key="tile-tcga-summary", description=f"tiling into {store.root}")
    print(summary.to_text())
    return summary.totals()
