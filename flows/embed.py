"""Embed a tile store with a model: ``python -m flows.embed``.

Reads any tile store of this project (per-slide tiles or the aligned
``[condition, tile]`` store) and writes an embedding store with the same
structure. ``--model``: ``h-optimus-0``, ``h0-mini``, ``tiny-teacher``,
``tiny-student`` or any timm model name, with random weights unless
``--weights FILE`` (safetensors or a torch checkpoint; nothing is
downloaded). A rerun resumes shard by shard; a finished job does nothing.
For several GPUs, ``--partitions N`` runs N processes on a local Dask
cluster, one GPU each; ``torchrun -m pipeline.embed`` is the alternative.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli import run_flow_command


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", required=True, type=Path, help="tile store or aligned tile store to read")
    parser.add_argument("--out", required=True, type=Path, help="embedding store to create or resume")
    parser.add_argument("--model", required=True, help="h-optimus-0, h0-mini, tiny-teacher, tiny-student or a timm name")
    parser.add_argument("--weights", type=Path, help="local weights file (safetensors or torch checkpoint)")
    parser.add_argument("--pooling", choices=("cls+mean", "cls"), default="cls+mean",
                        help="class token and mean patch token (default; the paper's HEST/EVA embedding), or the "
                        "class token only (what the PLISM leaderboard uses)")
    parser.add_argument("--seed", type=int, default=0,
                        help="without --weights: the random weights are drawn from (model, seed), recorded in the store")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored precision")
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass (default 256 on CUDA, 32 on CPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (CUDA when available)")
    parser.add_argument("--partitions", type=int, default=1,
                        help="processes splitting the shards, one GPU each (a local Dask cluster when > 1)")
    parser.add_argument("--dask-address", help="scheduler of an existing Dask cluster (one GPU per worker)")
    parser.add_argument("--loader-workers", type=int,
                        help="processes reading and decoding tiles (default 4 on CUDA; 0 on a CPU, where decoding "
                        "inline costs under 1 %% of the model and workers only add start-up)")
    parser.add_argument("--overwrite", action="store_true", help="delete the embedding store and start again")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    def run() -> None:
        import torch

        from flows.embedding_flow import embed_tiles
        from flows.runners import make_task_runner
        from pipeline.embed import EmbeddingSettings

        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        settings = EmbeddingSettings(
            model=args.model, weights=str(args.weights) if args.weights else None, pooling=args.pooling,
            dtype=args.dtype, batch_size=args.batch_size or (256 if device.startswith("cuda") else 32),
            device=device,
            loader_workers=args.loader_workers if args.loader_workers is not None else 4 * device.startswith("cuda"),
            init_seed=args.seed,
        )
        runner = make_task_runner(args.partitions, args.dask_address)
        embed_tiles.with_options(task_runner=runner)(
            tiles=str(args.tiles), out=str(args.out), settings=settings, partitions=args.partitions,
            overwrite=args.overwrite, progress_bar=not args.no_progress,
        )

    return run_flow_command("python -m flows.embed", "flows.embedding_flow", run)


if __name__ == "__main__":
    sys.exit(main())
