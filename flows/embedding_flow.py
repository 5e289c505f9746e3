"""The embedding flow: prepare the embedding store, then one task per partition (one per GPU, or one on CPU).

Partitions split the source's shards by rank (see :mod:`pipeline.embed`); on
a Dask cluster each task runs in its own worker process, on device
``cuda:<rank % GPUs>`` when the device is CUDA. Progress is the count of
finished shards, which the flow polls while the tasks run: one listing of
the store's ``done/`` folder against the unit list fixed at preparation
(milliseconds at 6,093 slides), never a walk of the stores.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait
from tqdm import tqdm

from flows.runners import is_transient_io_error
from pipeline.embed import EmbeddingSettings, embed_partition, pending_units, prepared_store
from storage.tile_units import open_tile_source

_POLL_S = 2.0


def _device_for(settings: EmbeddingSettings, rank: int) -> EmbeddingSettings:
    """Rank ``rank``'s own GPU when the device is plain ``cuda``."""
    if settings.device != "cuda":
        return settings
    import torch

    return dataclasses.replace(settings, device=f"cuda:{rank % max(1, torch.cuda.device_count())}")


@task(
    name="embed-partition",
    task_run_name="embed-partition-{rank}",
    cache_policy=None,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=is_transient_io_error,
)
def embed_partition_task(rank: int, world: int, tiles: str, out: str, settings: EmbeddingSettings) -> dict:
    return embed_partition(tiles, out, _device_for(settings, rank), rank, world)


@flow(name="embed", log_prints=True)
def embed_tiles(
    tiles: str,
    out: str,
    settings: EmbeddingSettings,
    partitions: int = 1,
    overwrite: bool = False,
    progress_bar: bool = False,
) -> dict:
    """Embed every tile of the store ``tiles`` into the embedding store ``out``; return the totals."""
    logger = get_run_logger()
    started = time.perf_counter()
    source = open_tile_source(tiles)
    with prepared_store(out, settings, source, overwrite=overwrite) as store:  # locked before it is prepared
        units = store.read_units()
        todo = pending_units(store, units)
        done_before = store.count_done()

        def finished() -> int:  # markers are only added while the partitions run
            return store.count_done() - done_before

        logger.info(
            "%s: %d shards, %d to embed with %s on %s in %d partition(s)",
            source.root,
            len(units),
            len(todo),
            settings.model,
            settings.device,
            partitions,
        )
        futures = embed_partition_task.map(
            list(range(partitions)),
            world=unmapped(partitions),
            tiles=unmapped(tiles),
            out=unmapped(str(store.root)),
            settings=unmapped(settings),
        )
        with tqdm(total=len(todo), unit="shard", disable=not progress_bar, file=sys.stderr) as bar:
            while wait(futures, timeout=_POLL_S).not_done:  # returns as soon as the last partition ends
                bar.update(finished() - bar.n)
            bar.update(finished() - bar.n)
        results = [future.result() for future in futures]
    tiles_done = sum(r["tiles"] for r in results)
    seconds = time.perf_counter() - started
    left = len(pending_units(store, units))
    summary = {
        "shards": len(units),
        "embedded_now": len(todo) - left,
        "left": left,
        "tiles": tiles_done,
        "seconds": round(seconds, 2),
        "tiles_per_second": round(tiles_done / seconds, 1),
    }
    create_markdown_artifact(
        "| shards | embedded now | left | tiles | seconds | tiles/s |\n|---|---|---|---|---|---|\n"
        f"| {summary['shards']} | {summary['embedded_now']} | {left} | {tiles_done} | {summary['seconds']} "
        f"| {summary['tiles_per_second']} |",
        key="embed-summary",
        description=f"{settings.model} into {store.root}",
    )
    print(f"embedded {tiles_done} tiles ({summary['embedded_now']} shards) in {seconds:.1f} s; {left} shards left")
    return summary
