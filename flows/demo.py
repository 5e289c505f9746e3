"""The whole paper pipeline on the shipped sample data: ``python -m flows.demo --out DIR``.

1. tile the real sample slides shipped in ``flows/samples`` into ``DIR/tiles.zarr``;
2. make a synthetic PLISM-like study from the real CMU sample (``DIR/plism-slides``: stainings ×
   scanners with known warps, stain and scanner changes);
3. register it and cut the aligned tiles into ``DIR/plism.zarr``;
4. embed both stores with each model (tiny random models by default, or ``--model NAME --weights
   FILE`` pairs) into ``DIR/embeddings/``;
5. score robustness into ``DIR/report/`` and print the path of ``index.html``.

Each step is the project's own flow, run as a subflow of ``demo``; rerunning resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli import run_flow_command

DEFAULT_MODELS = ("tiny-student", "tiny-teacher")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for every store and the report")
    parser.add_argument("--model", action="append", help="model to embed with (repeatable; default: two tiny ones)")
    parser.add_argument("--weights", action="append", help="weights file for each --model, in order ('-' for none)")
    parser.add_argument("--stainings", nargs="+", default=["GMH", "GIVH"], help="synthetic stainings (GMH first)")
    parser.add_argument("--scanners", nargs="+", default=["S60", "AT2"], help="synthetic scanners (S60 first)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes for tiling and registration")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def _models(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    names = args.model or list(DEFAULT_MODELS)
    weights = args.weights or []
    if len(weights) > len(names):
        raise ValueError("more --weights than --model")
    weights += ["-"] * (len(names) - len(weights))
    return [(name, None if w == "-" else w) for name, w in zip(names, weights, strict=True)]


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    def run() -> None:
        from flows.demo_flow import demo

        demo(
            out=str(args.out),
            models=_models(args),
            stainings=args.stainings,
            scanners=args.scanners,
            workers=args.workers,
            progress_bar=not args.no_progress,
        )

    return run_flow_command("python -m flows.demo", "flows.demo_flow", run)


if __name__ == "__main__":
    sys.exit(main())
