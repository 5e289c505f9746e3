"""Embedding speed: our store → store job against the model alone, same model, same batch size.

Run it from the repository root::

    .venv/bin/python benchmarks/embedding.py            # ViT-S/16 on 640 tiles, ~7 min on 2 cores
    .venv/bin/python benchmarks/embedding.py --quick    # 64 tiles: a smoke test, not a measurement

It writes (once, cached in ``--workdir``) a tile store of real H&E tissue
(``benchmarks/embedding_tiles.py``), one shard file per ``--tiles-per-shard``
tiles. Then it prints one markdown table of tiles/s for:

- **model only**: :func:`pipeline.models.embed` under ``torch.inference_mode``
  on uint8 tiles already decoded in memory (pinned on CUDA; bf16 autocast and
  channels-last on CUDA, as the job runs), ``--batch-size`` at a time, after
  two warm-up batches that are not timed. This is the ceiling. It runs first and
  again after the end-to-end rows; ratios are to the mean of the two, and a gap
  between them means the machine's load changed in between.
- **``embed_partition``**: :func:`pipeline.embed.embed_partition` called
  directly on a prepared embedding store, for each ``--loader-workers`` value:
  model build, loader start-up, reading and decoding the shards, the forward
  passes and the writes, all timed (a real run pays them once per partition);
  preparing the store is not.
- **``python -m flows.embed``**: the whole command as a subprocess, wall clock
  from launch to exit, with the loader-worker count that did best above:
  Python, torch and Prefect start-up (its temporary API server) included.
- **costs per tile**, to see where end-to-end time goes: reading and decoding
  one shard (:func:`storage.shard_file.read_shard`, on all cores), writing one
  unit's embeddings, building the model, and the loader alone (the same
  ``DataLoader`` as the job, no model) for the first batch and for all tiles.

The ratio of each end-to-end row to the model-only row is the figure of merit
(issue 4's goal: ≥ 90 %). On a CPU the loader's JPEG decoding runs on the same
cores as the model, so every decoded tile costs model time: the ratio cannot
reach 100 % there, unlike on a GPU. ``benchmarks/embedding_gpu.py`` runs the
same measurement for the full H0-mini and H-optimus-0 on a GPU.

Numbers are noisy on a busy machine; rerun before quoting them.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, and it holds benchmarks/tiling.py: ``import tiling``
# (reached through the flow and store modules) would import the script, not the package. Drop the folder
# before any import that could reach it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _sibling(name: str):
    """``benchmarks/<name>.py`` as a module (the folder is not a package and is off sys.path)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_tiles = _sibling("embedding_tiles")
REPO, TILE_PX = _tiles.REPO, _tiles.TILE_PX
build_tile_store, first_tiles = _tiles.build_tile_store, _tiles.first_tiles  # also used by embedding_gpu.py
WARMUP_BATCHES = 2
GOAL_RATIO = 0.9
FLOW_SUMMARY = re.compile(r"embedded (\d+) tiles \((\d+) shards\) in ([\d.]+) s")


@dataclass(frozen=True)
class Measure:
    """One row of the table; ``None`` cells are left blank, ``ratio`` is tiles/s over the model-only row's."""

    label: str
    tiles: int | None
    seconds: float | None
    ratio: float | None = None
    note: str = ""
    inner_seconds: float | None = None  # the flow's own timer, for the command row

    def row(self) -> str:
        rate = self.tiles / self.seconds if self.tiles and self.seconds else None
        ratio = "" if self.ratio is None else f"**{self.ratio:.0%}**"
        cells = [
            self.label,
            "" if self.tiles is None else f"{self.tiles:,}",
            "" if self.seconds is None else f"{self.seconds:.1f}",
            "" if rate is None else f"{rate:,.1f}",
            ratio,
            self.note
            if self.inner_seconds is None
            else (
                f"flow's own timer: {self.tiles / self.inner_seconds:,.1f} tiles/s in {self.inner_seconds:.1f} s"
                + ("" if self.ratio is None else f" (**{self.ratio * self.seconds / self.inner_seconds:.0%}**)")
                + f"; start-up and exit {self.seconds - self.inner_seconds:.1f} s"
            ),
        ]
        return "| " + " | ".join(cells) + " |"

    @property
    def rate(self) -> float:
        return self.tiles / self.seconds


TABLE_HEADER = "| measure | tiles | seconds | tiles/s | of model only | notes |\n|---|---:|---:|---:|---:|---|"


# --- measuring ---------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(model_name: str, tiles: np.ndarray, n_tiles: int, batch_size: int, device: str) -> Measure:
    """Forward passes through ``embed`` over in-memory uint8 tiles (cycled up to ``n_tiles``), warm-up excluded."""
    from pipeline.models import build_model, embed

    device = torch.device(device)
    on_cuda = device.type == "cuda"
    model = build_model(model_name, device=str(device)).eval()
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
    held = torch.from_numpy(tiles)
    if on_cuda:
        held = held.pin_memory()
    batches = [held[i : i + batch_size] for i in range(0, len(held) - batch_size + 1, batch_size)] or [held]
    n_batches = max(1, n_tiles // len(batches[0]))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
        for index in range(WARMUP_BATCHES):
            embed(model, batches[index % len(batches)])
        _synchronize(device)
        started = time.perf_counter()
        for index in range(n_batches):
            embed(model, batches[index % len(batches)])
        _synchronize(device)
        seconds = time.perf_counter() - started
    del model
    tiles_done = n_batches * len(batches[0])
    where = "pinned CPU memory, copied per batch" if on_cuda else "memory"
    return Measure(
        "model only",
        tiles_done,
        seconds,
        note=f"`embed` on uint8 tiles in {where}; {WARMUP_BATCHES} warm-up batches not timed",
    )


def run_partition(tiles: Path, out: Path, settings) -> Measure:
    """``embed_partition`` on a freshly prepared store, timed from the call to its return."""
    from pipeline.embed import embed_partition, prepared_store
    from storage.tile_units import open_tile_source

    with prepared_store(out, settings, open_tile_source(tiles), overwrite=True):
        started = time.perf_counter()
        result = embed_partition(str(tiles), str(out), settings)
        seconds = time.perf_counter() - started
    label = f"`embed_partition`, `loader_workers={settings.loader_workers}`"
    note = f"{result['units']} units; model build, loader start and writes included"
    return Measure(label, result["tiles"], seconds, note=note)


def run_flow(tiles: Path, out: Path, settings) -> Measure:
    """``python -m flows.embed`` on a fresh store, wall clock from launch to exit."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "flows.embed",
        "--tiles",
        str(tiles),
        "--out",
        str(out),
        "--model",
        settings.model,
        "--batch-size",
        str(settings.batch_size),
        "--device",
        settings.device,
        "--loader-workers",
        str(settings.loader_workers),
        "--no-progress",
    ]
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.run(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    summary = FLOW_SUMMARY.search(log.read_text())
    if process.returncode != 0 or summary is None:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}; see {log}")
    label = f"`python -m flows.embed --loader-workers {settings.loader_workers}`"
    return Measure(label, int(summary[1]), seconds, inner_seconds=float(summary[3]))


def _best_seconds(work, repeats: int = 3) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    return min(timings)


def costs_per_tile(
    tiles: Path,
    out: Path,
    settings,
    loader_workers: Sequence[int],
    model_rate: float,
) -> list[Measure]:
    """Where end-to-end time goes, each piece alone: decode, write, model build, the loader without a model."""
    from torch.utils.data import DataLoader

    from pipeline.embed import _UnitBatches  # the job's own dataset, so the loader is exactly the job's
    from pipeline.models import build_model
    from storage.embedding_store import EmbeddingStore
    from storage.tile_units import open_tile_source

    source = open_tile_source(tiles)
    units = source.units()
    unit = units[0]
    decode_s = _best_seconds(lambda: source.read(unit)) / unit.count
    store = EmbeddingStore(out)  # the last partition run's store: rewriting a unit with the same shape is harmless
    dim = int(store.read_attributes()["embedding"]["dim"])
    vectors = np.random.default_rng(0).standard_normal((unit.count, dim)).astype(np.float32)
    write_s = _best_seconds(lambda: store.write_unit(unit, vectors)) / unit.count
    started = time.perf_counter()
    build_model(settings.model, device=settings.device)
    build_s = time.perf_counter() - started
    n_total = sum(u.count for u in units)
    share = lambda per_tile: f"{per_tile * model_rate:.1%} of a model-only tile's time"  # noqa: E731
    rows = [
        Measure(
            "read + decode one shard",
            unit.count,
            decode_s * unit.count,
            note=(f"{decode_s * 1e3:.2f} ms/tile on {os.cpu_count()} cores ({share(decode_s)})"),
        ),
        Measure(
            "write one unit's embeddings",
            unit.count,
            write_s * unit.count,
            note=(f"{write_s * 1e3:.3f} ms/tile, {settings.dtype} + done marker ({share(write_s)})"),
        ),
        Measure(f"build `{settings.model}`", None, build_s, note="random weights; once per partition"),
    ]
    for workers in loader_workers:
        loader = DataLoader(
            _UnitBatches(source, units, settings.batch_size),
            batch_size=None,
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            multiprocessing_context="forkserver" if workers else None,
        )
        started = time.perf_counter()
        first = None
        for _ in loader:
            first = first or time.perf_counter() - started
        seconds = time.perf_counter() - started
        rows.append(
            Measure(
                f"loader alone, `loader_workers={workers}`",
                n_total,
                seconds,
                note=f"first batch after {first:.1f} s; no model",
            )
        )
    return rows


# --- the run -----------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="vit_small_patch16_224",
        help="model name for build_model (default ViT-S/16 at 224 px: h0-mini runs ~2.5 tiles/s "
        "on 2 cores; timm's DINOv2 ViT-S/14 names are built for 518 px)",
    )
    parser.add_argument("--tiles", type=int, default=640, help="tiles in the store (and timed in model-only)")
    parser.add_argument(
        "--tiles-per-shard",
        type=int,
        default=256,
        help="shard size of the store (the tiler's default is 2,048; smaller gives several units)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="tiles per forward pass (the CLI's CPU default)")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=(0, 1, 2), help="values to compare")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".work", help="stores")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    args = parser.parse_args()
    if args.quick:
        args.tiles, args.tiles_per_shard, args.loader_workers = 64, 32, (0, 2)
    return args


def measure(
    model: str,
    tiles_store: Path,
    out_dir: Path,
    batch_size: int,
    device: str,
    n_model_tiles: int,
    loader_workers: Sequence[int],
) -> list[Measure]:
    """Every row for one model on one tile store: model only, each loader setting, the command, the costs.

    Model only runs first and again last: ratios are to the mean of the two, and a gap between them shows
    that the machine's load changed during the end-to-end rows.
    """
    from pipeline.embed import EmbeddingSettings

    held = first_tiles(tiles_store, max(batch_size * WARMUP_BATCHES, min(n_model_tiles, 2048)))
    before = model_only(model, held, n_model_tiles, batch_size, device)
    settings = EmbeddingSettings(model=model, batch_size=batch_size, device=device)
    slug = model.replace("/", "_")
    partitions = [
        run_partition(tiles_store, out_dir / f"emb-{slug}-w{workers}.zarr", replace(settings, loader_workers=workers))
        for workers in loader_workers
    ]
    best_workers = loader_workers[max(range(len(partitions)), key=lambda i: partitions[i].rate)]
    flow = run_flow(tiles_store, out_dir / f"emb-{slug}-flow.zarr", replace(settings, loader_workers=best_workers))
    after = replace(model_only(model, held, n_model_tiles, batch_size, device), label="model only, again after")
    del held
    ceiling = (before.rate + after.rate) / 2
    rows = [replace(row, ratio=row.rate / ceiling) for row in (before, *partitions, flow, after)]
    rows += costs_per_tile(tiles_store, out_dir / f"emb-{slug}-w{best_workers}.zarr", settings, loader_workers, ceiling)
    return rows


def main() -> None:
    args = _parse_args()
    started = time.perf_counter()
    load = os.getloadavg()[0]
    stores = args.workdir / "stores"
    stores.mkdir(parents=True, exist_ok=True)
    tiles_store = build_tile_store(
        stores / f"embed-tiles-{args.tiles}-s{args.tiles_per_shard}.zarr",
        args.tiles,
        args.tiles_per_shard,
        tiles_per_slide=args.tiles,
    )
    rows = measure(args.model, tiles_store, stores, args.batch_size, args.device, args.tiles, args.loader_workers)
    print(
        f"\n`{args.model}` on {args.device}, batch {args.batch_size}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} cores; {args.tiles:,} tissue tiles of {TILE_PX} px in shards of {args.tiles_per_shard} "
        f"(JPEG q90 4:4:4); load average {load:.1f} at the start. "
        f"Goal: end to end ≥ {GOAL_RATIO:.0%} of model only. "
        f"Benchmark took {time.perf_counter() - started:.0f} s.\n"
    )
    print(TABLE_HEADER)
    print("\n".join(row.row() for row in rows))


if __name__ == "__main__":
    main()
