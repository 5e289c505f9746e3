"""Register a PLISM-style study and cut its aligned tiles: ``python -m flows.register_plism``.

Every slide of ``--slides`` named ``{staining}_{scanner}`` (``--pattern``) is
registered to the reference condition (``--reference GMH S60``); then, unless
``--stage register``, the reference's tissue tiles are cut from every
condition into the aligned tile store ``--out``. Every field of
:class:`flows.jobs.PlismJob` can be set from ``--config FILE`` (sections
``registration``, ``tiling``, ``refinement``) or ``--set
registration.view_mpp_um=4``. Exit code 0 when the run completed, even if
some conditions failed (they are in the store's status records and the
summary); 2 when the run itself could not happen.
``python -m flows.extract_plism`` is the same command with both stages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli import UserInputError, job_main
from flows.jobs import DEPLOYMENT_JOBS, PlismJob

FLAGS = {
    "--slides": "slides",
    "--out": "out",
    "--stage": "stage",
    "--reference": "reference",
    "--pattern": "pattern",
    "--stainings": "stainings",
    "--refine": "refine",
    "--workers": "workers",
    "--dask-address": "dask_address",
    "--overwrite": "overwrite",
}
PRESET = DEPLOYMENT_JOBS["register-plism"][1]  # what this command changes from PlismJob's defaults


def check(job: PlismJob) -> None:
    """Found before Prefect starts: the folder, its reference slide, and a store made with other parameters."""
    from flows.checks import existing_path, store_accepts
    from flows.jobs import NODES_PER_SIDE, plism_store_parameters

    existing_path(job.slides, "--slides")
    from registration.layout import PlismLayout  # reads the slides' headers: after the cheap checks

    try:
        layout = PlismLayout.from_folder(
            job.slides,
            pattern=job.pattern,
            reference=job.reference,
            stainings=tuple(job.stainings) if job.stainings else None,
        )
        reference = layout.reference.name
    except (ValueError, OSError) as error:  # no reference slide, a pattern without its groups
        raise UserInputError(str(error)) from None
    parameters = plism_store_parameters(
        reference, job.pattern, job.stainings, job.registration, job.refinement_options(), job.tiling, NODES_PER_SIDE
    )
    if Path(job.out).exists():  # a new store needs no check, nor zarr imported
        from storage.aligned_store import AlignedTileStore

        store_accepts(AlignedTileStore, job.out, parameters, job.overwrite)


def run(job: PlismJob, args: argparse.Namespace) -> None:
    from flows.job_flows import plism

    plism(job, progress_bar=not args.no_progress)


def main(
    argv: list[str] | None = None, *, prog: str = "python -m flows.register_plism", preset: dict | None = None
) -> int:
    return job_main(
        argv,
        prog=prog,
        description=__doc__.split("\n\n")[0],
        model=PlismJob,
        flags=FLAGS,
        flow_module="flows.plism_flow",
        run=run,
        check=check,
        preset=PRESET if preset is None else preset,
    )


if __name__ == "__main__":
    sys.exit(main())
