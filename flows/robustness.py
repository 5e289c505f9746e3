"""Score PLISM robustness of one or several models: ``python -m flows.robustness`` (``distillpath robustness``).

``--embeddings`` takes embedding stores of aligned PLISM tiles (one per
model, from ``python -m flows.embed`` on an aligned tile store); ``--out`` receives
``results.csv``, ``results.md``, per-pair tables and matrices, figures and
``index.html``. ``--subset`` restricts to a tile index file (``.npy``, e.g.
plismbench's ``tiles_subset_8139.npy``). Each store is reported under its
model name and weights checksum, or the names given with ``--label``; the
stores must embed the same aligned tile store. The parameters are the fields
of :class:`flows.jobs.RobustnessJob`.
"""

from __future__ import annotations

import argparse
import sys

from flows.cli import job_main
from flows.jobs import RobustnessJob

FLAGS = {
    "--embeddings": "embeddings",
    "--out": "out",
    "--ks": "ks",
    "--subset": "subset",
    "--label": "labels",
    "--qc-from": "qc_from",
}


def check(job: RobustnessJob) -> None:
    """Found before Prefect and torch start: the stores and the subset file exist."""
    from flows.checks import existing_path

    for store in [*job.embeddings, *(job.qc_from or [])]:
        existing_path(store, "--embeddings" if store in job.embeddings else "--qc-from")
    if job.subset:
        existing_path(job.subset, "--subset")


def run(job: RobustnessJob, args: argparse.Namespace) -> None:
    from flows.job_flows import robustness

    robustness(job)


def main(argv: list[str] | None = None, prog: str = "python -m flows.robustness") -> int:
    return job_main(
        argv,
        prog=prog,
        description=__doc__.split("\n\n")[0],
        model=RobustnessJob,
        flags=FLAGS,
        flow_module="flows.robustness_flow",
        run=run,
        check=check,
    )


if __name__ == "__main__":
    sys.exit(main())
