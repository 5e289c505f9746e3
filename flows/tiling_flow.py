"""The tiling flow: one Dask task per slide, into one tile store, under one Prefect flow run.

Where the slides are tiled is the caller's choice of task runner (see
:mod:`flows.runners`): a ``DaskTaskRunner``'s cluster, or this process. Slides
are handed to the cluster as plain Dask futures, a bounded window at a time,
and each result is released as it arrives (``docs/adr/0004-submission-at-scale.md``);
a Prefect task run per slide cost 11× the driver time. The command line is
:mod:`flows.tile_tcga`. A bad slide is a ``failed`` row in the manifest and the
summary, never a failed run; a lost worker costs the slides it was tiling, and
a slide tiled twice by Dask is found complete the second time. The command line
starts the first slides before this flow run exists, and the flow takes them over
(:mod:`flows.early_slides`, ``docs/adr/0006-first-slides-before-the-flow-run.md``).
"""

from __future__ import annotations

import hashlib
import time
from functools import partial

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from flows import progress
from flows.early_slides import take_over
from flows.submission import as_completed_bounded, dask_client_of_flow, outcomes, submit_on_flow_runner, window_for
from flows.summary import RunSummary
from flows.tiling_run import RunRequest, open_run
from flows.tiling_task import tile_slide_task
from storage.manifest import FAILED, REJECTED_PREFIX, SKIPPED, SlideRecord, failed_record, write_record
from storage.tile_store import TileStore, utc_now
from tiling.config import TilingConfig
from tiling.qc_index import write_qc_index
from tiling.slide_list import RejectedSlide, SlideSpec

PROGRESS_EVERY_S = 2.0  # the Prefect progress artifact is updated at most this often: one API call each


def _record_rejected(store: TileStore, rejected: RejectedSlide) -> SlideRecord:
    """Persist a refused slide-list row under a safe key derived from its row and path."""
    key = f"{REJECTED_PREFIX}{rejected.row}-" + hashlib.sha1(str(rejected.path).encode()).hexdigest()[:12]
    record = failed_record(
        key,
        rejected.path,
        rejected.error,
        finished_at=utc_now(),
        extra={"requested_slide_id": rejected.slide_id, "row": rejected.row},
    )
    write_record(store, record)
    return record


def _record_crash(store: TileStore, spec: SlideSpec, error: Exception) -> SlideRecord:
    """Record, in ``store``, a slide whose task raised (retries exhausted, a bug, a worker lost too often)."""
    record = failed_record(spec.slide_id, spec.path, error, unexpected=True, finished_at=utc_now())
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
    request = RunRequest(slides, out, config, mpp_override_um, mpp_replace_um, overwrite)
    early = take_over(request)
    opened = early.opened if early else open_run(request)
    store, todo = opened.store, opened.todo
    try:
        summary = RunSummary(started=opened.opened_at)
        for row in opened.rejected:
            logger.error("refused: %s", row.error)
            summary.add(_record_rejected(store, row))
        for spec in opened.complete:
            summary.add(SlideRecord(slide_id=spec.slide_id, source_path=str(spec.path), status=SKIPPED))
        logger.info(
            "%d slides listed: %d to tile, %d already complete, %d refused%s",
            len(todo) + len(opened.complete) + len(opened.rejected),
            len(todo),
            summary.count(SKIPPED),
            len(opened.rejected),
            f"; {len(early.submitted)} started before the flow run" if early else "",
        )
        progress_id = create_progress_artifact(progress=0.0, key="tile-tcga-progress", description="slides tiled")
        client = dask_client_of_flow()
        submit = submit_on_flow_runner(client, tile_slide_task)
        started = early.submitted if early else []
        finished = as_completed_bounded(
            lambda spec: submit(spec, str(store.root), config), todo[len(started) :], window_for(client), started
        )
        reported_at = time.monotonic()
        with progress.progress_bar(
            len(todo), "slide", enabled=progress_bar, already_done=summary.count(SKIPPED)
        ) as bar:
            for count, (_, record) in enumerate(outcomes(finished, partial(_record_crash, store)), start=1):
                summary.add(record)
                if record.status == FAILED:
                    logger.warning("%s failed: %s", record.slide_id, record.error)
                else:
                    logger.info(
                        "%s: %d tiles in %.1f s%s",
                        record.slide_id,
                        record.n_tiles,
                        record.seconds,
                        f" ({record.message})" if record.message else "",
                    )
                bar.update(1)
                bar.set_postfix(tiles=summary.tiles, failed=summary.count(FAILED))
                if count == len(todo) or time.monotonic() - reported_at >= PROGRESS_EVERY_S:
                    update_progress_artifact(progress_id, 100.0 * count / len(todo))
                    reported_at = time.monotonic()
        logger.info("QC page: %s", write_qc_index(store))
    finally:
        store.release_run_lock()
    summary.finish()
    create_markdown_artifact(summary.to_markdown(), key="tile-tcga-summary", description=f"tiling into {store.root}")
    print(summary.to_text())
    return summary.totals()
