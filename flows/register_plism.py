"""Register a PLISM-style study and cut its aligned tiles: ``python -m flows.register_plism``.

Every slide of ``--slides`` named ``{staining}_{scanner}`` (``--pattern``) is
registered to the reference condition (``--reference GMH S60``); then, unless
``--stage register``, the reference's tissue tiles are cut from every
condition into the aligned tile store ``--out``. Exit code 0 when the run
completed, even if some conditions failed (they are in the store's status
records and the summary); 2 when the run itself could not happen.
``python -m flows.extract_plism`` is the same command with both stages.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows.cli import run_flow_command


def _parse_args(argv: list[str] | None, prog: str, default_stage: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", required=True, help="folder of the study's slides")
    parser.add_argument("--out", required=True, help="aligned tile store (a zarr folder) to create or resume")
    parser.add_argument("--stage", choices=("register", "all"), default=default_stage,
                        help="register only, or register and extract the aligned tiles")
    parser.add_argument("--reference", nargs=2, metavar=("STAINING", "SCANNER"), help="reference condition (GMH S60)")
    parser.add_argument("--pattern", help="regular expression with groups 'staining' and 'scanner' for file names")
    parser.add_argument("--stainings", nargs="+", help="keep only these stainings (the reference's is always kept)")
    parser.add_argument("--refine", action="store_true", help="refine each registration at high resolution near tiles")
    parser.add_argument("--config", type=Path,
                        help="YAML file with sections registration, tiling and refinement (their fields)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="local worker processes (1 runs in this process); ignored with --dask-address")
    parser.add_argument("--dask-address", help="scheduler of an existing Dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--overwrite", action="store_true", help="delete the store and redo every condition")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def _flow_options(args: argparse.Namespace) -> dict:
    import yaml

    from registration.config import RegistrationConfig
    from tiling.config import TilingConfig

    sections = (yaml.safe_load(args.config.read_text()) or {}) if args.config else {}
    unknown = set(sections) - {"registration", "tiling", "refinement"}
    if unknown:
        raise ValueError(f"{args.config}: unknown sections {', '.join(sorted(unknown))}")
    refinement = sections.get("refinement")
    options = {
        "registration": RegistrationConfig.model_validate(sections.get("registration") or {}),
        "tiling": TilingConfig.model_validate(sections.get("tiling") or {}),
        "refinement": (refinement or {}) if (args.refine or refinement is not None) else None,
        "stainings": args.stainings,
        "stage": args.stage,
        "overwrite": args.overwrite,
        "progress_bar": not args.no_progress,
    }
    if args.reference:
        options["reference"] = tuple(args.reference)
    if args.pattern:
        options["pattern"] = args.pattern
    return options


def main(argv: list[str] | None = None, *, prog: str = "python -m flows.register_plism",
         default_stage: str = "register") -> int:
    args = _parse_args(argv, prog, default_stage)

    def run() -> None:
        from flows.plism_flow import plism
        from flows.runners import make_task_runner

        options = _flow_options(args)
        runner = make_task_runner(args.workers, args.dask_address)
        plism.with_options(task_runner=runner)(slides=str(args.slides), out=str(args.out), **options)

    return run_flow_command(prog, "flows.plism_flow", run)


if __name__ == "__main__":
    sys.exit(main())
