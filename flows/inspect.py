"""Look inside a store from the shell.

    python -m flows.inspect info STORE [--json]
    python -m flows.inspect preview STORE SLIDE --out slide.png [--long-edge 2048]
    python -m flows.inspect qc STORE            # (re)write STORE/qc/index.html

The logic is in :mod:`storage.inspection` and :mod:`tiling.qc_index`; this
module only parses arguments and prints, so that one ``distillpath``
command can call :func:`main` with its own arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from storage.inspection import PREVIEW_LONG_EDGE_PX, format_info, info, preview
from storage.tile_store import StoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.inspect", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("info", help="kind, slides or conditions, tiles, failures, parameters, size on disk")
    show.add_argument("store", type=Path)
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    picture = commands.add_parser("preview", help="a slide's tiles pasted back at their coordinates, as a PNG")
    picture.add_argument("store", type=Path)
    picture.add_argument("slide")
    picture.add_argument("--out", type=Path, required=True, help="PNG to write")
    picture.add_argument("--long-edge", type=int, default=PREVIEW_LONG_EDGE_PX, help="pixels on the long side")
    page = commands.add_parser("qc", help="write STORE/qc/index.html: every slide with its QC picture")
    page.add_argument("store", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return the exit status (2 for a store or slide that cannot be used)."""
    arguments = _parser().parse_args(argv)
    try:
        if arguments.command == "info":
            summary = info(arguments.store)
            print(json.dumps(summary, indent=2) if arguments.json else format_info(summary))
        elif arguments.command == "preview":
            print(preview(arguments.store, arguments.slide, arguments.out, arguments.long_edge))
        else:
            from storage.tile_store import TileStore
            from tiling.qc_index import write_qc_index

            info(arguments.store)  # refuses what is not a store
            print(write_qc_index(TileStore(arguments.store)))
    except (StoreError, KeyError) as error:
        print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
