"""Tile a folder or CSV of slides into a tile store: ``python -m flows.tile_tcga``.

Runs the ``tile-tcga`` flow in-process for one worker, on a local Dask cluster
for several, or on an existing cluster (``--dask-address``). Exit code 0 when
the run completed, even if some slides failed (they are in the manifest and
the summary); 2 when the run itself could not happen (unreadable slide list,
a store made with other parameters, a store in use, no Prefect API).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows.cli import run_flow_command


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.tile_tcga", description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", required=True, help="folder of slides, or CSV with columns path[,slide_id,mpp]")
    parser.add_argument("--out", required=True, help="tile store (a zarr folder) to create or resume")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="local worker processes (1 runs in this process); ignored with --dask-address")
    parser.add_argument("--dask-address", help="scheduler of an existing Dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--mpp-override", type=float,
                        help="µm/px for slides whose files record none (a recorded value is kept)")
    parser.add_argument("--mpp-replace", type=float,
                        help="µm/px for every slide, replacing what the files record (logged per slide)")
    parser.add_argument("--tile-size", type=int, help="tile edge in pixels (default 224)")
    parser.add_argument("--target-mpp", type=float, help="µm per output pixel (default 0.5)")
    parser.add_argument("--threads", type=int, help="threads per slide (default 2)")
    parser.add_argument("--allow-upsampling", action="store_true", default=None,
                        help="upsample slides scanned coarser than --target-mpp instead of failing them")
    parser.add_argument("--config", type=Path, help="YAML file with any TilingConfig fields")
    parser.add_argument("--overwrite", action="store_true", help="delete the store and redo every slide")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    def run() -> None:
        from flows.runners import make_task_runner
        from flows.tiling_flow import tile_tcga
        from tiling.config import TilingConfig

        base = TilingConfig.from_yaml(args.config) if args.config else TilingConfig()
        config = base.with_overrides(
            tile_size_px=args.tile_size, target_mpp_um=args.target_mpp, threads=args.threads,
            allow_upsampling=args.allow_upsampling,
        )
        tile_tcga.with_options(task_runner=make_task_runner(args.workers, args.dask_address))(
            slides=str(args.slides), out=str(args.out), config=config, mpp_override_um=args.mpp_override,
            mpp_replace_um=args.mpp_replace, overwrite=args.overwrite, progress_bar=not args.no_progress,
        )

    return run_flow_command("python -m flows.tile_tcga", "flows.tiling_flow", run)


if __name__ == "__main__":
    sys.exit(main())
