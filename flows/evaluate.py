"""Probe an embedding store against a labels table: ``python -m flows.evaluate`` (``distillpath evaluate``).

``--task regression`` follows HEST-Benchmark (standardise, PCA to 256,
ridge with alpha = 100 / (components · targets), Pearson per target averaged);
``--task classification`` fits a logistic-regression linear probe (balanced
accuracy). Each distinct value of the folds column is held out once and the
model trained on the others. The labels CSV joins by ``slide_id`` (slide
level: the mean of the slide's tile embeddings) or by ``slide_id`` with
``tile`` or ``x``, ``y`` (tile level); see :mod:`pipeline.probes.inputs`.
Writes ``results.csv`` and ``results.md`` into ``--out``. The parameters are
the fields of :class:`flows.jobs.EvaluateJob`.
"""

from __future__ import annotations

import argparse
import sys

from flows.cli import job_main
from flows.jobs import EvaluateJob

FLAGS = {
    "--embeddings": "embeddings",
    "--labels": "labels",
    "--task": "task",
    "--out": "out",
    "--folds-column": "folds_column",
    "--level": "level",
    "--targets": "targets",
}


def check(job: EvaluateJob) -> None:
    """Found before Prefect starts: the embedding store and the labels file exist."""
    from flows.checks import existing_path

    existing_path(job.embeddings, "--embeddings")
    existing_path(job.labels, "--labels")


def run(job: EvaluateJob, args: argparse.Namespace) -> None:
    from flows.job_flows import evaluate

    evaluate(job)


def main(argv: list[str] | None = None, prog: str = "python -m flows.evaluate") -> int:
    return job_main(
        argv,
        prog=prog,
        description=__doc__.split("\n\n")[0],
        model=EvaluateJob,
        flags=FLAGS,
        flow_module="flows.evaluate_flow",
        run=run,
        check=check,
    )


if __name__ == "__main__":
    sys.exit(main())
