"""Distil a teacher into a student on tile stores: ``python -m flows.distill`` (``distillpath distill``).

Every hyperparameter is a field of :class:`flows.jobs.DistillJob`, with the
paper's Table 4 as defaults: ``--config`` takes a YAML file of them
(``configs/distill/h0-mini.yaml`` spells out the paper's,
``configs/distill/tiny-cpu.yaml`` runs on two CPU cores in minutes) and
``--set train.iterations=100`` (or ``train.iterations=100``) changes one. The
run directory ``--out`` holds ``config.yaml``, ``metrics.jsonl``, the
checkpoints and ``student.safetensors``; rerunning the same command resumes
from the latest checkpoint, and a rerun with other hyperparameters is refused
before anything starts. ``--processes N`` trains with N processes under
torchrun (one per GPU with ``--device cuda``), each holding whole networks
(``--sharding ddp``) or a share of every network's parameters (``--sharding
fsdp``, for a teacher too large to sit beside the student on one GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.cli import job_main
from flows.jobs import DistillJob

FLAGS = {
    "--tiles": "tiles",
    "--out": "out",
    "--processes": "processes",
    "--device": "device",
    "--sharding": "sharding",
}


def check(job: DistillJob) -> None:
    """Found before Prefect starts: a run directory of other hyperparameters, an unreadable checkpoint (torch
    is imported only when there is one), a missing tile store, a resume whose stores hold out other tiles than
    the run's; and a loud warning for a teacher without weights.
    """
    from flows.checks import existing_path
    from flows.cli import UserInputError
    from pipeline.distill.config import random_teacher_warning, recorded_text

    config = job.distill_config()
    recorded = Path(job.out) / "config.yaml"
    if recorded.exists() and recorded.read_text() != recorded_text(config):
        raise UserInputError(f"--out {job.out} holds a run with other hyperparameters (its config.yaml); use another")
    if any((Path(job.out) / "checkpoints").glob("*.pt")):
        from pipeline.distill.run_directory import CheckpointError, RunDirectory

        try:
            RunDirectory(job.out).check_checkpoints()
        except CheckpointError as error:
            raise UserInputError(str(error)) from None
    for store in job.tiles:
        existing_path(store, "--tiles")
    recorded_held_out = Path(job.out) / "held_out.json"
    if recorded_held_out.exists():
        from pipeline.distill.held_out import HeldOutMismatch, HeldOutSplit, check_same_held_out

        train = config.train
        now = HeldOutSplit.of(job.tiles, train.agreement_tiles, train.agreement_split).record()
        try:
            check_same_held_out(json.loads(recorded_held_out.read_text()), now, Path(job.out))
        except HeldOutMismatch as error:
            raise UserInputError(str(error)) from None
    warning = random_teacher_warning(config)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)


def run(job: DistillJob, args: argparse.Namespace) -> None:
    from flows.job_flows import distill

    distill(job, progress_bar=not args.no_progress)


def main(argv: list[str] | None = None, prog: str = "python -m flows.distill") -> int:
    return job_main(
        argv,
        prog=prog,
        description=__doc__.split("\n\n")[0],
        model=DistillJob,
        flags=FLAGS,
        flow_module="flows.distill_flow",
        run=run,
        check=check,
    )


if __name__ == "__main__":
    sys.exit(main())
