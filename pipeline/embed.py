"""Embed every tile of a tile store into an embedding store, one process per device.

Work is split by source shard (a :class:`~storage.tile_units.TileUnit`):
the preparation (rank 0, or the flow) takes the store's run lock, which it
holds until every rank is done, and fixes the run's unit list in the
embedding store; process ``rank`` of ``world`` takes every ``world``-th unit
of that list not yet done, so GPUs never share a shard and need not talk to
each other, and a slide the tiler publishes meanwhile waits for the next run
instead of being taken twice or by nobody. Within a process,
a torch ``DataLoader`` reads and decodes shards in worker processes while the
model runs; tiles travel as uint8 (4× less than float32) through pinned
memory and are normalised on the device. On CUDA the model runs in bf16
autocast with channels-last inputs.

Run it under torchrun, one process per GPU::

    torchrun --nproc-per-node 8 -m pipeline.embed --tiles TILES --out EMB --model h0-mini --weights W

or through the Prefect flow ``python -m flows.embed`` (one process, or Dask workers).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.models import build_model, embed, embedding_dim, weights_sha256
from storage.embedding_store import EmbeddingStore
from storage.tile_store import StoreError
from storage.tile_units import TileSource, TileUnit, open_tile_source

# How long ranks wait for one another: rank 0's preparation, then the slowest rank's share at the end.
# torchrun ends every rank when one fails, so this only bounds a hang; shares can differ by hours.
_RANK_WAIT = timedelta(hours=24)


@dataclass(frozen=True)
class EmbeddingSettings:
    """What defines the embeddings (recorded in the store; a rerun must match) and how they are computed."""

    model: str
    weights: str | None = None
    pooling: str = "cls+mean"
    dtype: str = "float16"
    batch_size: int | None = None  # None: 256 on CUDA, 32 on a CPU (the one place this default is stated)
    device: str = "cpu"
    loader_workers: int | None = None  # None: 4 on CUDA; 0 on a CPU, where decoding inline costs under 1 %
    init_seed: int = 0  # random weights (no ``weights``) are drawn from (model, init_seed): a resume gets the same

    def __post_init__(self) -> None:
        on_gpu = self.device.startswith("cuda")
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", 256 if on_gpu else 32)
        if self.loader_workers is None:
            object.__setattr__(self, "loader_workers", 4 if on_gpu else 0)

    def store_parameters(self, dim: int, source: TileSource) -> dict:
        return {
            "model": self.model,
            "weights": str(Path(self.weights).resolve()) if self.weights else None,
            "weights_sha256": weights_sha256(self.weights) if self.weights else None,
            "init_seed": None if self.weights else self.init_seed,
            "pooling": self.pooling,
            "definition": "class token, then the mean of the patch tokens (registers excluded)"
            if self.pooling == "cls+mean"
            else "class token",
            "dim": dim,
            "dtype": self.dtype,
            "source": str(source.root),
            "source_layout": source.layout,
        }


class _UnitBatches(IterableDataset):
    """Yields ``(unit index, offset, tiles uint8 [b, H, W, 3])``; each loader worker reads its own units."""

    def __init__(self, source: TileSource, units: list[TileUnit], batch_size: int) -> None:
        self.source, self.units, self.batch_size = source, units, batch_size

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for index in range(worker, len(self.units), workers):
            tiles = torch.from_numpy(self.source.read(self.units[index]))
            for offset in range(0, len(tiles), self.batch_size):
                yield index, offset, tiles[offset : offset + self.batch_size]


@contextmanager
def prepared_store(
    out: Path | str, settings: EmbeddingSettings, source: TileSource, *, overwrite: bool = False, threads: int = 8
) -> Iterator[EmbeddingStore]:
    """Create or reopen the embedding store for ``settings``, take its run lock, lay out its arrays and fix
    the run's unit list; the lock is held until the block ends.

    The lock is taken before preparation writes anything, so a second run
    on the same store is refused (:class:`~storage.tile_store.StoreError`
    naming the first run) before it can recreate groups or rewrite the unit
    list under the first run's ranks. Once per run, in one process, before
    any partition starts; the partitions run inside the block.
    """
    dim = embedding_dim(build_model(settings.model, device="meta"), settings.pooling)
    store = EmbeddingStore.create_or_open(out, settings.store_parameters(dim, source), overwrite=overwrite)
    store.acquire_run_lock()
    try:
        store.prepare(source, dim, settings.dtype, threads=threads)
        yield store
    finally:
        store.release_run_lock()


def pending_units(store: EmbeddingStore, units: list[TileUnit], rank: int = 0, world: int = 1) -> list[TileUnit]:
    """Rank ``rank``'s share of ``units`` (the prepared list), less those already done (one listing of ``done/``)."""
    done = store.done_keys()
    return [unit for unit in units[rank::world] if unit.key not in done]


def embed_partition(tiles: str, out: str, settings: EmbeddingSettings, rank: int = 0, world: int = 1) -> dict:
    """Embed rank ``rank``'s share of the store ``tiles`` into the prepared store ``out``; return counts."""
    started = time.perf_counter()
    source = open_tile_source(tiles)
    device = torch.device(settings.device)
    store = EmbeddingStore(out)
    units = pending_units(store, store.read_units(), rank, world)
    on_cuda = device.type == "cuda"
    # Loader workers start from a clean "forkserver" process: a plain fork would copy this process's
    # thread pools (the JPEG codec's, zarr's event loop) without their threads, and hang on first use.
    # The server imports torch and the readers once; the workers start while the model is built.
    if settings.loader_workers:
        multiprocessing.set_forkserver_preload(["torch", "storage.tile_units", "pipeline.embed"])
    loader = DataLoader(
        _UnitBatches(source, units, settings.batch_size),
        batch_size=None,
        num_workers=settings.loader_workers,
        pin_memory=on_cuda,
        prefetch_factor=4 if settings.loader_workers else None,
        multiprocessing_context="forkserver" if settings.loader_workers else None,
    )
    batches = iter(loader)
    model = build_model(settings.model, settings.weights, device=str(device), init_seed=settings.init_seed).eval()
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
    results: dict[int, np.ndarray] = {}
    filled: dict[int, int] = {}
    n_tiles = 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
        for index, offset, batch in batches:
            vectors = embed(model, batch.to(device, non_blocking=True), settings.pooling).float().cpu().numpy()
            unit = units[index]
            results.setdefault(index, np.empty((unit.count, vectors.shape[1]), np.float32))
            results[index][offset : offset + len(vectors)] = vectors
            filled[index] = filled.get(index, 0) + len(vectors)
            if filled[index] == unit.count:
                store.write_unit(unit, results.pop(index))
                n_tiles += unit.count
    return {"rank": rank, "units": len(units), "tiles": n_tiles, "seconds": round(time.perf_counter() - started, 2)}


def _main() -> None:
    """``torchrun`` entry point: rank 0 locks and prepares the store, every rank embeds its share on its own GPU."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights")
    parser.add_argument("--pooling", choices=("cls+mean", "cls"), default="cls+mean")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--batch-size", type=int, help="default 256 on CUDA, 32 on a CPU")
    parser.add_argument("--loader-workers", type=int, help="default 4 on CUDA, 0 on a CPU")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights when no --weights")
    args = parser.parse_args()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    settings = EmbeddingSettings(
        args.model, args.weights, args.pooling, args.dtype, args.batch_size, device, args.loader_workers, args.seed
    )
    distributed = world > 1
    if distributed:  # only to wait for rank 0's preparation and lock; the embedding needs no communication
        torch.distributed.init_process_group("gloo", timeout=_RANK_WAIT)
    with ExitStack() as run:
        refusal = None
        if rank == 0:  # holds the store's run lock until every rank is done
            try:
                run.enter_context(prepared_store(args.out, settings, open_tile_source(args.tiles)))
            except StoreError as error:
                refusal = str(error)
        if distributed:  # the other ranks learn of a refusal instead of waiting on a preparation that never comes
            shared = [refusal]
            torch.distributed.broadcast_object_list(shared, src=0)
            refusal = shared[0]
        if refusal is None:
            print(embed_partition(args.tiles, args.out, settings, rank, world))
        if distributed:
            torch.distributed.barrier()  # rank 0 releases the lock only after the slowest rank
            torch.distributed.destroy_process_group()
    if refusal is not None:
        raise SystemExit(f"rank {rank}: {refusal}")


if __name__ == "__main__":
    _main()
