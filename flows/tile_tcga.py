"""Tile a folder or CSV of slides into a tile store: ``python -m flows.tile_tcga``.

One Prefect task per slide, run in-process for one worker, on a local Dask
cluster for several, or on an existing cluster (``--dask-address``). A bad
slide is a ``failed`` row in the manifest and the summary, never a failed
run; the exit code is non-zero only when the run itself could not happen
(unreadable slide list, a store made with other parameters, a store in use).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from tqdm import tqdm

from flows.runners import make_task_runner, quiet_dask_logging, share_ephemeral_api
from flows.summary import RunSummary
from storage.manifest import FAILED, SKIPPED, SlideRecord, write_record
from storage.tile_store import StoreError, TileStore, utc_now
from tiling.config import TilingConfig
from tiling.errors import SlideError
from tiling.slide_list import RejectedSlide, SlideSpec, list_slides
from tiling.tile_slide import tile_slide


def _is_transient(task, task_run, state) -> bool:
    """Retry I/O hiccups (network file systems, object-store mounts), never a bad slide."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, SlideError)


@task(
    name="tile-slide",
    task_run_name="tile-{spec.slide_id}",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_is_transient,
    cache_policy=None,
    log_prints=False,
)
def tile_slide_task(spec: SlideSpec, store_root: str, config: TilingConfig) -> SlideRecord:
    return tile_slide(spec, TileStore(store_root), config)


def _record_rejected(store: TileStore, rejected: RejectedSlide) -> SlideRecord:
    """Persist a refused slide-list row under a safe key derived from its row and path."""
    key = f"rejected-{rejected.row}-" + hashlib.sha1(str(rejected.path).encode()).hexdigest()[:12]
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
    overwrite: bool = False,
    progress_bar: bool = False,
) -> dict:
    """Tile every slide of ``slides`` (folder or CSV) into the store ``out``; return the summary."""
    logger = get_run_logger()
    specs, rejected = list_slides(slides, mpp_override_um)
    store = TileStore.create_or_open(out, config.model_dump(), overwrite=overwrite)
    store.acquire_run_lock()
    try:
        store.remove_staging_debris()
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
                logger.info("%s: %d tiles in %.1f s", record.slide_id, record.n_tiles, record.seconds)
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


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.tile_tcga", description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", required=True, help="folder of slides, or CSV with columns path[,slide_id,mpp]")
    parser.add_argument("--out", required=True, help="tile store (a zarr folder) to create or resume")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="local worker processes (1 runs in this process); ignored with --dask-address")
    parser.add_argument("--dask-address", help="scheduler of an existing Dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--mpp-override", type=float, help="µm/px for slides whose files record none")
    parser.add_argument("--tile-size", type=int, help="tile edge in pixels (default 224)")
    parser.add_argument("--target-mpp", type=float, help="µm per output pixel (default 0.5)")
    parser.add_argument("--threads", type=int, help="threads per slide (default 2)")
    parser.add_argument("--allow-upsampling", action="store_true", default=None,
                        help="upsample slides scanned coarser than --target-mpp instead of failing them")
    parser.add_argument("--config", type=Path, help="YAML file with any TilingConfig fields")
    parser.add_argument("--overwrite", action="store_true", help="delete the store and redo every slide")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    base = TilingConfig.from_yaml(args.config) if args.config else TilingConfig()
    config = base.with_overrides(
        tile_size_px=args.tile_size, target_mpp_um=args.target_mpp, threads=args.threads,
        allow_upsampling=args.allow_upsampling,
    )
    quiet_dask_logging()
    runner = make_task_runner(args.workers, args.dask_address)
    try:
        with share_ephemeral_api():
            tile_tcga.with_options(task_runner=runner)(
                slides=str(args.slides), out=str(args.out), config=config, mpp_override_um=args.mpp_override,
                overwrite=args.overwrite, progress_bar=not args.no_progress,
            )
    except (StoreError, FileNotFoundError, ValueError) as error:
        print(f"tile_tcga: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
