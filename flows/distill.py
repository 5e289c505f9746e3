"""Distil a teacher into a student on tile stores: ``python -m flows.distill``.

``--config`` is a YAML file of :class:`pipeline.distill.config.DistillConfig`
(``configs/distill/h0-mini.yaml`` is the paper's Table 4,
``configs/distill/tiny-cpu.yaml`` runs on two CPU cores in minutes). The run
directory ``--out`` holds ``metrics.jsonl``, the checkpoints and
``student.safetensors``; rerunning the same command resumes from the latest
checkpoint. ``--processes N`` trains with N processes under torchrun (one per
GPU with ``--device cuda``), each holding whole networks (``--sharding ddp``)
or a share of every network's parameters (``--sharding fsdp``, for a teacher
too large to sit beside the student on one GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli import run_flow_command


def _parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="distillation config (YAML)")
    parser.add_argument("--tiles", required=True, nargs="+", help="tile stores to train on")
    parser.add_argument("--out", required=True, type=Path, help="run directory to create or resume")
    parser.add_argument("--processes", type=int, default=1, help="training processes (torchrun when > 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--sharding",
        choices=("ddp", "fsdp"),
        default="ddp",
        help="with several processes: whole networks in each (ddp) or parameters sharded (fsdp)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def _check_inputs(args: argparse.Namespace) -> None:
    """Fail before any server starts on what the user can fix: the config, a checkpoint that cannot be
    resumed; and say loudly when the teacher has no weights.
    """
    from pipeline.distill.config import DistillConfig, random_teacher_warning
    from pipeline.distill.run_directory import RunDirectory

    config = DistillConfig.from_yaml(args.config)
    RunDirectory(args.out).check_checkpoints()
    warning = random_teacher_warning(config)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)


def main(argv: list[str] | None = None, prog: str = "python -m flows.distill") -> int:
    args = _parse_args(argv, prog)
    try:
        _check_inputs(args)
    except (OSError, ValueError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2

    def run() -> None:
        from flows.distill_flow import distill

        distill(
            config=str(args.config),
            tiles=[str(t) for t in args.tiles],
            out=str(args.out),
            processes=args.processes,
            device=args.device,
            sharding=args.sharding,
            progress_bar=not args.no_progress,
        )

    return run_flow_command(prog, "flows.distill_flow", run)


if __name__ == "__main__":
    sys.exit(main())
