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
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from flows.cli import job_main
from flows.jobs import TileJob

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

    existing_path(job.slides, "--slides")
    if Path(job.out).exists():  # a new store needs no check, nor zarr imported (a second under load)
        from storage.tile_store import TileStore

        store_accepts(TileStore, job.out, job.tiling.model_dump(), job.overwrite, without_effect=job.tiling.RUN_ONLY)


@contextlib.contextmanager
def start_cluster(job: TileJob) -> Iterator[None]:
    """The run's local Dask cluster and its first slides, started while Prefect loads (see :mod:`flows.early_slides`).

    The workers never call Prefect's API; the flow takes the started run over.
    """
    from flows.runners import local_cluster_started_early

    # Each worker re-runs this module, as multiprocessing does with the main one: its imports are preloaded too.
    preload = ["flows.cli", "flows.jobs", "flows.tiling_task"]
    with local_cluster_started_early(job.workers, job.dask_address, preload=preload) as cluster:
        from flows.early_slides import first_slides_started_early  # imports zarr: after the cluster's start began
        from flows.tiling_run import RunRequest

        request = RunRequest(job.slides, job.out, job.tiling, job.mpp_override_um, job.mpp_replace_um, job.overwrite)
        with first_slides_started_early(request, cluster):
            yield


def run(job: TileJob, args: argparse.Namespace) -> None:
    from flows.job_flows import tile

    tile(job, progress_bar=not args.no_progress)


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
        prepare=start_cluster,
    )


if __name__ == "__main__":
    sys.exit(main())
