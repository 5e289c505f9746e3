"""Tile a folder or CSV of slides into a tile store: ``python -m flows.tile_tcga`` (``distillpath tile``).

Runs the ``tile-tcga`` flow in-process for one worker, on a local Dask cluster
for several, or on an existing cluster (``--dask-address``). Every field of
:class:`flows.jobs.TileJob` can be set from ``--config FILE`` or ``--set
tiling.tissue.min_saturation=30``; the main ones have flags. Exit code 0 when
the run completed, even if some slides failed (they are in the manifest and
the summary); 2 when the run itself could not happen (a typo, a missing path,
a store made with other parameters, a store in use, no Prefect API).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from flows.cli import job_main
from flows.jobs import TileJob

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

FLAGS = {
    "--slides": "slides",
    "--out": "out",
    "--workers": "workers",
    "--dask-address": "dask_address",
    "--mpp-override": "mpp_override_um",
    "--mpp-replace": "mpp_replace_um",
    "--tile-size": "tiling.tile_size_px",
    "--target-mpp": "tiling.target_mpp_um",
    "--threads": "tiling.threads",
    "--allow-upsampling": "tiling.allow_upsampling",
    "--overwrite": "overwrite",
}


def check(job: TileJob) -> None:
    """What the user can fix, found before Prefect starts: the slides exist, the store accepts these parameters."""
    from flows.checks import existing_path, store_accepts
    from storage.tile_store import TileStore

    existing_path(job.slides, "--slides")
    store_accepts(TileStore, job.out, job.tiling.model_dump(), job.overwrite)


def start_task_runner(job: TileJob) -> AbstractContextManager[Callable[[], TaskRunner]]:
    """The run's local Dask cluster, started while Prefect loads (the workers never call Prefect's API)."""
    from flows.runners import task_runner_started_early

    # Each worker re-runs this module, as multiprocessing does with the main one: its imports are preloaded too.
    preload = ["flows.cli", "flows.jobs", "flows.tiling_task"]
    return task_runner_started_early(job.workers, job.dask_address, preload=preload)


def run(job: TileJob, args: argparse.Namespace, task_runner: Callable[[], TaskRunner]) -> None:
    from flows.tiling_flow import tile_tcga

    tile_tcga.with_options(task_runner=task_runner())(
        slides=job.slides,
        out=job.out,
        config=job.tiling,
        mpp_override_um=job.mpp_override_um,
        mpp_replace_um=job.mpp_replace_um,
        overwrite=job.overwrite,
        progress_bar=not args.no_progress,
    )


def main(argv: list[str] | None = None, prog: str = "python -m flows.tile_tcga") -> int:
    return job_main(
        argv,
        prog=prog,
        description=__doc__.split("\n\n")[0],
        model=TileJob,
        flags=FLAGS,
        flow_module="flows.tiling_flow",
        run=run,
        check=check,
        prepare=start_task_runner,
    )


if __name__ == "__main__":
    sys.exit(main())
