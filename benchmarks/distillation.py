"""Distillation step time on CPU: where one ``Stage.train_step`` goes, and its overhead over the bare networks.

Run it from the repository root::

    .venv/bin/python benchmarks/distillation.py            # ViT-S/14 teacher → ViT-Ti/14 student, ~2 min on 2 cores
    .venv/bin/python benchmarks/distillation.py --quick    # tiny models, 2 steps: a smoke test, not a measurement

It builds a real :class:`pipeline.distill.train.Stage` (the distillation stage:
trainable student with DINO and iBOT heads, its EMA, AdamW, the objective with
its centres) between two small DINOv2-style ViT/14s (4 registers, SwiGLU,
LayerScale, the architecture of ``pipeline.models``): a ViT-S teacher (384
wide, 12 blocks, 21.7 M parameters) and a ViT-Ti student (192 wide, 12 blocks,
5.5 M), both laid out for 112-px inputs. The teacher heads are random, fixed
ones, as if loaded (teacher-head mode ``checkpoint``), and the teacher's
LayerScale factors are set to 1 so that it is informative (as in
``tests/test_distill_training.py``); neither changes what a step computes.
Batches come from the real loader (``pipeline.distill.train._batches``:
:class:`~pipeline.distill.data.TileStream` and ``make_loader``, with
``--loader-workers`` forkserver workers) over a tile store of the two shipped
slides (53 tiles of 224 px, written once into ``--workdir``), cut into 2 global
crops of 112 px and 8 local crops of 56 px a sample (the paper's 224/98 px
halved, so local crops hold as many tokens per global crop as the paper's),
16 samples a step, in float32 (bf16 autocast is slow on CPUs without AMX).

Every step runs ``Stage.train_step`` itself, unchanged, with timers wrapped
around the calls it makes (the teacher side, the student side, each head, the
objective, ``zero_grad``, ``backward``, ``clip_grad_norm_``, the optimiser
step, the EMA update); a full backward pre-hook on the student backbone's last
norm splits the backward pass where the gradient reaches the backbone (the
autograd engine runs every head and loss node, created later, before any
backbone node). "Loader wait" is the time ``next`` blocks on the loader.
Next to every full step, on the same batch, a **bare step** runs only the
teacher backbone forward and the student backbone forward and backward (a
trivial loss, no heads, objective, optimiser or EMA): the issue's floor. The two
alternate which goes first, as the loader's worker prepares the next batch
right after ``next`` returns and slows whatever runs then on shared cores.
The overhead is the whole step over the bare one, minus one. Figures are
medians over ``--steps`` steps after ``--warmup`` untimed ones.

Memory is the process's resident set (``tracemalloc`` does not see torch's
allocations): after the build, and the peak during full and bare steps,
sampled every 2 ms from a thread (psutil), with ``ru_maxrss`` as a check.
The heads' share of the multiply-adds is computed from the layer shapes, for
this configuration and for the paper's (H-optimus-0 → H0-mini, 224/98 px,
131,072 prototypes), to say how far the CPU split carries over.

``benchmarks/distillation_gpu.py`` runs the same measurement for the real
models on one GPU. Numbers are noisy on a busy machine; rerun before quoting them.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, and it holds benchmarks/tiling.py: ``import tiling``
# would import that script, not the package. Drop the folder before any import that could reach it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from pipeline.distill import train as distill_train  # noqa: E402
from pipeline.distill.config import DistillConfig  # noqa: E402
from pipeline.distill.data import TileStream  # noqa: E402


def load_steps_module():
    """``benchmarks/distillation_steps.py`` as a module (the folder is not a package and is off sys.path)."""
    spec = importlib.util.spec_from_file_location("benchmark_distillation_steps", _HERE / "distillation_steps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


steps = load_steps_module()


def tile_store(workdir: Path) -> Path:
    """The two shipped slides tiled once (53 tiles of 224 px, shards of 16), as ``tests/conftest.py`` does."""
    from storage.tile_store import TileStore
    from tiling.config import TilingConfig
    from tiling.slide_list import SlideSpec, slide_id_from_path
    from tiling.tile_slide import tile_slide

    root = workdir / "tiles.zarr"
    config = TilingConfig(tiles_per_shard=16)
    store = TileStore.create_or_open(root, config.model_dump())
    done = set(store.complete_slide_ids())
    for path in steps.SLIDES:
        if slide_id_from_path(path) not in done:
            tile_slide(SlideSpec(path, slide_id_from_path(path)), store, config)
    return root


def batch_seconds(config: DistillConfig, store: Path, repeats: int = 3) -> float:
    """Seconds to make one batch in this process, as a loader worker makes it (the stream's first steps)."""
    stream = TileStream.for_run(config, [str(store)])
    seconds = []
    for step in range(repeats):
        start = time.perf_counter()
        stream.batch(step)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", type=Path, default=steps.REPO / "benchmarks" / ".work" / "distillation", help="the tile store"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the loader worker takes another core)")
    parser.add_argument("--loader-workers", type=int, help=f"default {steps.CPU_SETUP.loader_workers}")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 steps: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 2, 1
    return args


def main() -> None:
    args = _parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    steps.register_bench_models()
    setup = steps.QUICK_SETUP if args.quick else steps.CPU_SETUP
    if args.loader_workers is not None:
        setup = dataclasses.replace(setup, loader_workers=args.loader_workers)
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = tile_store(args.workdir)
    device = torch.device("cpu")
    memory = steps.PeakMemory(device)
    before = memory.current()
    stage = steps.build_stage(setup, device)
    built = memory.current()
    batch_s = batch_seconds(stage.config, store)
    batches = distill_train._batches(stage.config, [str(store)], 0)
    next(batches)  # start the loader's workers (forkserver: each imports torch) before anything is timed
    records = steps.measure_steps(stage, batches, args.steps, args.warmup, memory)
    memory.close()
    times = steps.medians(records)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"\n{os.cpu_count()} cores, {args.threads} torch thread(s), load average "
        f"{os.getloadavg()[0]:.1f}; {setup.teacher} → {setup.student}, batch {setup.batch} × (2 × "
        f"{setup.global_px} px + {setup.local_crops} × {setup.local_px} px crops), {setup.prototypes:,} prototypes, "
        f"head MLP {setup.hidden_dim}, {setup.precision}; "
        f"steps.medians of {args.steps} steps after {args.warmup} warm-up. "
        f"Benchmark took {time.perf_counter() - started:.0f} s.\n"
    )
    print(
        steps.table(
            times,
            memory,
            before,
            built,
            setup,
            [
                f"| ru_maxrss (whole process) | | | {max_rss / steps.MIB:,.0f} | check on the sampled peaks |",
                f"| loader: one batch made in this process | {batch_s * 1e3:,.0f} | | | what the worker spends "
                "on each batch: JPEG decode and multi-crop, median of 3, before training |",
            ],
        )
    )


if __name__ == "__main__":
    main()
