"""Score PLISM robustness of one or several models: ``python -m flows.robustness``.

``--embeddings`` takes embedding stores of aligned PLISM tiles (one per
model, from ``python -m flows.embed`` on an aligned tile store); ``--out`` receives
``results.csv``, ``results.md``, per-pair tables and matrices, figures and
``index.html``. ``--subset`` restricts to a tile index file (``.npy``, e.g.
plismbench's ``tiles_subset_8139.npy``). Each store is reported under its
model name and weights checksum, or the names given with ``--label``; the
stores must embed the same aligned tile store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli import run_flow_command


def _parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--embeddings", required=True, nargs="+", help="embedding stores, one per model")
    parser.add_argument("--out", required=True, type=Path, help="folder for the results and the report")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5, 10], help="k of the top-k accuracies")
    parser.add_argument("--subset", type=Path, help="tile indices to keep (.npy)")
    parser.add_argument(
        "--label",
        nargs="+",
        help="a name per store for the report, in the order of --embeddings (default: model name and weights checksum)",
    )
    parser.add_argument("--no-progress", action="store_true", help="accepted for symmetry with the other commands")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = "python -m flows.robustness") -> int:
    args = _parse_args(argv, prog)

    def run() -> None:
        from flows.robustness_flow import robustness

        robustness(
            embeddings=[str(e) for e in args.embeddings],
            out=str(args.out),
            ks=tuple(args.ks),
            subset=str(args.subset) if args.subset else None,
            labels=args.label,
        )

    return run_flow_command(prog, "flows.robustness_flow", run)


if __name__ == "__main__":
    sys.exit(main())
