"""Embedding speed on a GPU: the full H0-mini student and H-optimus-0 teacher, end to end against the model alone.

Run it from the repository root on a machine with one CUDA GPU::

    .venv/bin/python benchmarks/embedding_gpu.py                       # ~3-5 min on one H100/H200
    .venv/bin/python benchmarks/embedding_gpu.py --quick --device cpu  # tiny sizes on a CPU: a smoke test

The measurement is ``benchmarks/embedding.py``'s, row for row (see its
docstring), for each model with random weights: model only (``embed`` under
``torch.inference_mode`` on uint8 tiles in pinned memory, bf16 autocast and
channels-last as the job runs, warm-up excluded), ``embed_partition`` on a
prepared store for each ``--loader-workers`` value, ``python -m flows.embed``
with the best of them, model only again, then the costs per tile (decode,
write, model build, the loader alone). Each model gets its own store of
tissue tiles (written once into ``--workdir``, 2,048-tile shards as the tiler
writes them), sized so that its forward passes take some seconds: the loader's
start-up (forkserver workers importing torch) and the model build are paid
once per partition and would otherwise swamp a fast model.

With ``--quick --device cpu``, H-optimus-0 (1.1 B parameters) is replaced by
``tiny-teacher`` and the sizes are tiny: it only checks that the script runs.

Numbers are noisy on a shared machine; rerun before quoting them.
"""

from __future__ import annotations

import sys
from pathlib import Path

# As in benchmarks/embedding.py: this folder holds benchmarks/tiling.py, which would shadow the ``tiling``
# package. Drop it from sys.path before any import that could reach it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402


def _load_cpu_benchmark():
    """``benchmarks/embedding.py`` as a module (the folder is not a package and is off sys.path)."""
    spec = importlib.util.spec_from_file_location("benchmark_embedding", _HERE / "embedding.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_cpu_benchmark()

# Tiles per model: about 5-10 s of forward passes each on an H200 (H0-mini, a ViT-B/14, runs thousands of
# tiles/s in bf16; H-optimus-0, a ViT-g/14 of 1.1 B parameters, several hundred).
TILES = {"h0-mini": 32768, "h-optimus-0": 4096}
QUICK_TILES = {"h0-mini": 16, "tiny-teacher": 64}
TILES_PER_SHARD = 2048  # the tiler's default
QUICK_TILES_PER_SHARD = 8


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(TILES), help="model names for build_model")
    parser.add_argument(
        "--tiles",
        type=int,
        nargs="+",
        help=f"tiles per model, in --models order (default {', '.join(map(str, TILES.values()))})",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="tiles per forward pass (the CLI's CUDA default)")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=(4, 8), help="values to compare")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", type=Path, default=bench.REPO / "benchmarks" / ".work", help="stores")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    args = parser.parse_args()
    args.tiles_per_shard = TILES_PER_SHARD
    if args.quick:
        if args.device == "cpu":
            args.models = [("tiny-teacher" if name == "h-optimus-0" else name) for name in args.models]
        args.tiles = args.tiles or [QUICK_TILES.get(name, 64) for name in args.models]
        args.batch_size, args.loader_workers, args.tiles_per_shard = 8, (0, 1), QUICK_TILES_PER_SHARD
    args.tiles = args.tiles or [TILES.get(name, 4096) for name in args.models]
    if len(args.tiles) != len(args.models):
        parser.error("give one --tiles value per model")
    return args


def main() -> None:
    args = _parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("benchmarks/embedding_gpu.py: no CUDA device; use --device cpu with --quick for a smoke test")
    started = time.perf_counter()
    stores = args.workdir / "stores"
    stores.mkdir(parents=True, exist_ok=True)
    sections = []
    for model, n_tiles in zip(args.models, args.tiles, strict=True):
        tiles_store = bench.build_tile_store(
            stores / f"embed-tiles-{n_tiles}-s{args.tiles_per_shard}.zarr",
            n_tiles,
            args.tiles_per_shard,
            tiles_per_slide=TILES_PER_SHARD * 4,
        )
        rows = bench.measure(model, tiles_store, stores, args.batch_size, args.device, n_tiles, args.loader_workers)
        sections.append([f"| **{model}** | | | | | |", *(row.row() for row in rows)])
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(
        f"\n{device}, {os.cpu_count()} cores; batch {args.batch_size}, bf16 autocast on CUDA; tissue tiles of "
        f"{bench.TILE_PX} px in shards of {args.tiles_per_shard} (JPEG q90 4:4:4), "
        f"{TILES_PER_SHARD * 4:,} a slide. "
        f"Goal: end to end ≥ {bench.GOAL_RATIO:.0%} of model only. "
        f"Benchmark took {time.perf_counter() - started:.0f} s.\n"
    )
    print(bench.TABLE_HEADER)
    print("\n".join(line for section in sections for line in section))


if __name__ == "__main__":
    main()
