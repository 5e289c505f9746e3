"""Probe an embedding store against a labels table: ``python -m flows.evaluate``.

``--task regression`` follows HEST-Benchmark (standardise, PCA to 256,
ridge with alpha = 100 / (components · targets), Pearson per target averaged);
``--task classification`` fits a logistic-regression linear probe (balanced
accuracy). Each distinct value of the folds column is held out once and the
model trained on the others. The labels CSV joins by ``slide_id`` (slide
level: the mean of the slide's tile embeddings) or by ``slide_id`` with
``tile`` or ``x``, ``y`` (tile level); see :mod:`pipeline.probes.inputs`.
Writes ``results.csv`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli import run_flow_command


def _parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--embeddings", required=True, type=Path, help="embedding store (of a per-slide tile store)")
    parser.add_argument("--labels", required=True, type=Path, help="CSV: slide_id [, tile | x, y], fold, targets")
    parser.add_argument("--task", required=True, choices=("regression", "classification"))
    parser.add_argument("--out", required=True, type=Path, help="folder for results.csv and results.md")
    parser.add_argument("--folds-column", default="fold", help="column giving each sample's test fold (default fold)")
    parser.add_argument("--level", choices=("slide", "tile"), default="slide",
                        help="one sample per slide (mean of its tiles; default) or per tile")
    parser.add_argument("--targets", nargs="+", default=(),
                        help="target columns (default: every column but the keys and the folds column)")
    parser.add_argument("--no-progress", action="store_true", help="accepted as by the other flows (no bar here)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = "python -m flows.evaluate") -> int:
    args = _parse_args(argv, prog)

    def run() -> None:
        from flows.evaluate_flow import evaluate_embeddings
        from pipeline.probes import ProbeSettings

        settings = ProbeSettings(task=args.task, level=args.level, folds_column=args.folds_column,
                                 targets=tuple(args.targets))
        evaluate_embeddings(embeddings=str(args.embeddings), labels=str(args.labels), out=str(args.out),
                            settings=settings)

    return run_flow_command(prog, "flows.evaluate_flow", run)


if __name__ == "__main__":
    sys.exit(main())
