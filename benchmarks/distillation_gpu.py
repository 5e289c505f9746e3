"""Distillation speed on one GPU: H-optimus-0 (ViT-g/14) into H0-mini (ViT-B/14), 131,072 prototypes, bf16.

Run it from the repository root on a machine with one CUDA GPU::

    .venv/bin/python benchmarks/distillation_gpu.py                       # batch 32 a GPU, ~1-2 min on one H100/H200
    .venv/bin/python benchmarks/distillation_gpu.py --batch 64            # another per-GPU batch
    .venv/bin/python benchmarks/distillation_gpu.py --quick --device cpu  # tiny models on a CPU: a smoke test

It builds the real :class:`pipeline.distill.train.Stage` of the paper's run
(``configs/distill/h0-mini.yaml``'s defaults: H-optimus-0 teacher with random
weights and its LayerScale factors set to 1, random fixed teacher heads, H0-mini
student with DINO and iBOT heads of 131,072 prototypes, its EMA, AdamW, bf16
autocast) with ``--batch`` samples on the one GPU, each sample 2 global crops
of 224 px and 8 local crops of 98 px. The crops are synthetic uint8 noise held
in pinned memory (no tile store: the loader is ``benchmarks/distillation.py``'s
and the embedding benchmarks' business); ``Stage.train_step`` copies them to the
GPU as it does in a run. It then reports:

- **samples/s**: ``--steps`` calls of ``Stage.train_step``, unchanged and
  unsynchronised, after ``--warmup`` untimed ones, with the peak of
  ``torch.cuda.max_memory_allocated`` over them (and the memory the Stage holds
  before its first step: weights, EMA, heads; AdamW's state comes at the first step);
- **the step's parts and its overhead over the bare networks**, measured as
  ``benchmarks/distillation.py`` does (see its docstring) over
  ``--breakdown-steps`` more steps, with a ``torch.cuda.synchronize`` at every
  timer (which costs the overlap of CPU launch and GPU work, so these steps are
  a little slower than the unsynchronised ones).

A batch that does not fit is reported as such. With ``--quick --device cpu``
the models are ``tiny-teacher`` and ``tiny-student`` and the sizes tiny: it only
checks that the script runs. Numbers are noisy on a shared machine; rerun before quoting them.
"""

from __future__ import annotations

import sys
from pathlib import Path

# As in benchmarks/distillation.py: this folder holds benchmarks/tiling.py, which would shadow the ``tiling``
# package. Drop it from sys.path before any import that could reach it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import torch  # noqa: E402


def _load_cpu_benchmark():
    """``benchmarks/distillation_steps.py`` as a module (the folder is not a package and is off sys.path)."""
    spec = importlib.util.spec_from_file_location("benchmark_distillation_steps", _HERE / "distillation_steps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_cpu_benchmark()


def synthetic_batches(setup, device: torch.device) -> Iterator[dict]:
    """The same uint8 noise batch forever, laid out as ``TileStream`` lays one out (pinned on CUDA)."""
    generator = torch.Generator().manual_seed(0)
    pin = device.type == "cuda"

    def crops(count: int, size_px: int) -> torch.Tensor:
        noise = torch.randint(0, 256, (count, setup.batch, size_px, size_px, 3), dtype=torch.uint8, generator=generator)
        return noise.pin_memory() if pin else noise

    batch = {
        "global_crops": crops(2, setup.global_px),
        "local_crops": crops(setup.local_crops, setup.local_px),
        "index": torch.arange(setup.batch),
    }
    while True:
        yield batch


def throughput(stage, batches: Iterator[dict], steps: int, warmup: int, memory) -> float:
    """Seconds per ``train_step``, unsynchronised but for the ends, over ``steps`` after ``warmup``."""
    sync = bench.device_sync(stage.device)
    for _ in range(warmup):
        stage.train_step(next(batches))
    with memory.phase("full step"):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            losses = stage.train_step(next(batches))
        sync()
        seconds = (time.perf_counter() - start) / steps
    print(f"  {steps} steps: {seconds:.3f} s a step, loss {float(losses['loss']):.3f}", file=sys.stderr, flush=True)
    return seconds


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="samples a step on this GPU (2 global + 8 local crops)")
    parser.add_argument("--steps", type=int, default=10, help="timed, unsynchronised steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--breakdown-steps", type=int, default=3, help="synchronised steps timed part by part")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.breakdown_steps = 2, 1, 2
    return args


def main() -> None:
    args = _parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/distillation_gpu.py: no CUDA device; use --device cpu with --quick for a smoke test")
    started = time.perf_counter()
    setup = bench.QUICK_SETUP if args.quick else dataclasses.replace(bench.PAPER_SETUP, batch=args.batch)
    if device.type == "cpu":
        setup = dataclasses.replace(setup, precision="fp32")  # bf16 autocast is slow on CPUs without AMX
        torch.set_num_threads(1)  # a smoke test on shared cores: no thread thrash
    memory = bench.PeakMemory(device)
    before = memory.current()
    stage = bench.build_stage(setup, device)
    built = memory.current()
    build_s = time.perf_counter() - started
    batches = synthetic_batches(setup, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (
        f"\n{name}, {os.cpu_count()} cores; {setup.teacher} → {setup.student}, batch {setup.batch} × "
        f"(2 × {setup.global_px} px + {setup.local_crops} × {setup.local_px} px crops) of synthetic uint8, "
        f"{setup.prototypes:,} prototypes, {setup.precision}; build {build_s:.0f} s"
    )
    try:
        step_s = throughput(stage, batches, args.steps, args.warmup, memory)
        records = bench.measure_steps(stage, batches, args.breakdown_steps, 0, memory)
    except torch.OutOfMemoryError as error:
        print(
            f"{header}.\n\n| measure | value |\n|---|---|\n| batch {setup.batch} | **out of memory**: "
            f"{str(error).splitlines()[0]} |"
        )
        sys.exit(1)
    memory.close()
    times = bench.medians(records)
    peak_full = memory.peaks["full step"]
    extra = [
        f"| **samples/s, unsynchronised `train_step`** | {step_s * 1e3:,.0f} | | {peak_full / bench.MIB:,.0f} | "
        f"**{setup.batch / step_s:,.1f} samples/s** ({setup.batch * (2 + setup.local_crops) / step_s:,.0f} "
        f"crops/s), mean of {args.steps} steps after {args.warmup}; MiB: peak over every full step |"
    ]
    print(
        f"{header}; part-by-part figures are medians of {args.breakdown_steps} synchronised steps. "
        f"Benchmark took {time.perf_counter() - started:.0f} s.\n"
    )
    print(bench.table(times, memory, before, built, setup, extra, loader=False))


if __name__ == "__main__":
    main()
