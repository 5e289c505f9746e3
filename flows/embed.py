"""Embed a tile store with a model: ``python -m flows.embed`` (``distillpath embed``).

Reads any tile store of this project (per-slide tiles or the aligned
``[condition, tile]`` store) and writes an embedding store with the same
structure. ``--model``: ``h-optimus-0``, ``h0-mini``, ``tiny-teacher``,
``tiny-student`` or any timm model name, with random weights unless
``--weights FILE`` (safetensors or a torch checkpoint; nothing is
downloaded). Every field of :class:`flows.jobs.EmbedJob` can be set from
``--config FILE`` or ``--set``. A rerun resumes shard by shard; a finished
job does nothing. For several GPUs, ``--partitions N`` runs N processes on a
local Dask cluster, one GPU each; ``torchrun -m pipeline.embed`` is the
alternative.
"""

from __future__ import annotations

import argparse
import sys

from flows.cli import job_main
from flows.jobs import EmbedJob

FLAGS = {
    "--tiles": "tiles",
    "--out": "out",
    "--model": "model",
    "--weights": "weights",
    "--pooling": "pooling",
    "--seed": "seed",
    "--dtype": "dtype",
    "--batch-size": "batch_size",
    "--device": "device",
    "--partitions": "partitions",
    "--dask-address": "dask_address",
    "--loader-workers": "loader_workers",
    "--overwrite": "overwrite",
}


def check(job: EmbedJob) -> None:
    """Found before Prefect and torch start: the tile store and the weights file exist, the model name is known."""
    from flows.checks import existing_path, known_model

    existing_path(job.tiles, "--tiles")
    if job.weights:
        existing_path(job.weights, "--weights")
    known_model(job.model, "--model")


def run(job: EmbedJob, args: argparse.Namespace) -> None:
    from flows.job_flows import embed

    embed(job, progress_bar=not args.no_progress)


def main(argv: list[str] | None = None, prog: str = "python -m flows.embed") -> int:
    return job_main(
        argv,
        prog=prog,
        description=__doc__.split("\n\n")[0],
        model=EmbedJob,
        flags=FLAGS,
        flow_module="flows.embedding_flow",
        run=run,
        check=check,
    )


if __name__ == "__main__":
    sys.exit(main())
