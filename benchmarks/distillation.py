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
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import psutil  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pipeline.distill import train as distill_train  # noqa: E402
from pipeline.distill.augment import MultiCrop  # noqa: E402
from pipeline.distill.config import DistillConfig  # noqa: E402
from pipeline.distill.data import TileStream  # noqa: E402
from pipeline.distill.networks import make_heads, tokens  # noqa: E402
from pipeline.distill.train import DISTILL, Stage  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.models.registry import MODEL_SPECS, ViTSpec  # noqa: E402

REPO = _HERE.parent
SLIDES = (REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs",
          REPO / "tests" / "data" / "slides" / "OS-1-detail.ome.tif")
MIB = 2**20

# Small twins of the real models (pipeline.models.registry): same family, laid out for the CPU's 112-px global crops.
BENCH_MODELS = {
    "bench-vit-s14": ViTSpec("vit_small_patch14_reg4_dinov2", embed_dim=384, depth=12, num_heads=6, img_size=112),
    "bench-vit-ti14": ViTSpec("vit_small_patch14_reg4_dinov2", embed_dim=192, depth=12, num_heads=3, img_size=112),
}


@dataclass(frozen=True)
class Setup:
    """What one benchmark run distils: models, heads, crops, batch and precision."""

    teacher: str
    student: str
    batch: int
    prototypes: int
    hidden_dim: int
    global_px: int
    local_px: int
    local_crops: int
    precision: str
    loader_workers: int = 0

    def config(self) -> DistillConfig:
        """The distillation config: the paper's defaults except for these sizes."""
        return DistillConfig.model_validate({
            "models": {"teacher": self.teacher, "student": self.student},
            # Random fixed teacher heads are passed to the Stage directly (as mode "checkpoint" would load them).
            "heads": {"prototypes": self.prototypes, "hidden_dim": self.hidden_dim, "teacher_heads": "fit"},
            "train": {"batch_size_total": self.batch, "iterations": 100_000, "precision": self.precision,
                      "loader_workers": self.loader_workers, "window_shards": 2},
            "crops": {"global_crop_size": self.global_px, "local_crop_size": self.local_px,
                      "local_crops_number": self.local_crops},
        })


CPU_SETUP = Setup("bench-vit-s14", "bench-vit-ti14", batch=16, prototypes=4096, hidden_dim=512, global_px=112,
                  local_px=56, local_crops=8, precision="fp32", loader_workers=1)
QUICK_SETUP = Setup("tiny-teacher", "tiny-student", batch=4, prototypes=256, hidden_dim=64, global_px=56,
                    local_px=28, local_crops=2, precision="fp32", loader_workers=0)
PAPER_SETUP = Setup("h-optimus-0", "h0-mini", batch=32, prototypes=131_072, hidden_dim=2048, global_px=224,
                    local_px=98, local_crops=8, precision="bf16")

GOAL_OVERHEAD = 0.15


def register_bench_models() -> None:
    """Make the small twins buildable by name (``build_model``), as the Stage builds its student."""
    for name, spec in BENCH_MODELS.items():
        MODEL_SPECS.setdefault(name, spec)


def build_stage(setup: Setup, device: torch.device) -> Stage:
    """A distillation Stage with a random, informative teacher (LayerScale 1) and random fixed teacher heads."""
    config = setup.config()
    torch.manual_seed(1)
    teacher = build_model(setup.teacher, device=device, dynamic_img_size=True)
    with torch.no_grad():
        for name, parameter in teacher.named_parameters():
            if name.endswith(".gamma"):
                parameter.fill_(1.0)
    heads = make_heads(teacher.embed_dim, config.heads).to(device)
    return Stage(DISTILL, config, teacher, device, heads)


# --- timers ----------------------------------------------------------------------------------------------------


class StepClock:
    """Seconds per labelled part of a step; ``sync`` waits for the device before every reading."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        # When the backward pass reaches the student's heads, then its backbone (set by backward pre-hooks).
        self.heads_backward_from: float | None = None
        self.backbone_backward_from: float | None = None

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    @contextlib.contextmanager
    def timer(self, label: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.seconds[label] += self.now() - start

    def wrap(self, label: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self.timer(label):
                return function(*args, **kwargs)
        return timed

    def take(self) -> dict[str, float]:
        taken, self.seconds = dict(self.seconds), defaultdict(float)
        return taken


@contextlib.contextmanager
def instrumented(stage: Stage, clock: StepClock) -> Iterator[None]:
    """Timers around every call ``Stage.train_step`` makes; the step's own code runs unchanged."""
    patched: list[object] = []

    def patch(owner: object, name: str, label: str) -> None:
        setattr(owner, name, clock.wrap(label, getattr(owner, name)))  # an instance attribute shadows the method
        patched.append((owner, name))

    patch(stage.teacher, "forward", "teacher")
    for head in stage.teacher.heads.values():
        patch(head, "forward", "teacher heads")
    patch(stage.model, "forward", "student")
    for head in stage.student.heads.values():
        patch(head, "forward", "student heads")
    patch(stage.objective, "forward", "losses")
    patch(stage.optimizer, "zero_grad", "zero_grad")
    patch(stage.scaler, "step", "optimizer step")
    patch(stage, "_update_ema", "EMA")
    clip, backward = nn.utils.clip_grad_norm_, torch.Tensor.backward

    def timed_backward(tensor: torch.Tensor, *args, **kwargs) -> None:
        clock.heads_backward_from = clock.backbone_backward_from = None
        start = clock.now()
        backward(tensor, *args, **kwargs)
        end = clock.now()
        backbone_from = clock.backbone_backward_from or end
        heads_from = clock.heads_backward_from or backbone_from
        clock.seconds["backward: losses"] += heads_from - start
        clock.seconds["backward: student heads"] += backbone_from - heads_from
        clock.seconds["backward: student backbone"] += end - backbone_from

    def heads_reached(module: nn.Module, grad_output: tuple) -> None:
        if clock.heads_backward_from is None:
            clock.heads_backward_from = clock.now()

    def backbone_reached(module: nn.Module, grad_output: tuple) -> None:
        if clock.backbone_backward_from is None:
            clock.backbone_backward_from = clock.now()

    hooks = [stage.student.backbone.norm.register_full_backward_pre_hook(backbone_reached),
             *(head.register_full_backward_pre_hook(heads_reached) for head in stage.student.heads.values())]
    nn.utils.clip_grad_norm_ = clock.wrap("grad clip", clip)
    torch.Tensor.backward = timed_backward
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        nn.utils.clip_grad_norm_, torch.Tensor.backward = clip, backward
        for owner, name in patched:
            delattr(owner, name)


def bare_step(stage: Stage, batch: dict, clock: StepClock) -> None:
    """Teacher backbone forward, student backbone forward and backward on ``batch``: nothing else."""
    global_crops = batch["global_crops"].flatten(0, 1).to(stage.device, non_blocking=True)
    local_crops = batch["local_crops"].flatten(0, 1).to(stage.device, non_blocking=True)
    backbone = stage.student.backbone
    with stage._autocast():
        with clock.timer("bare: teacher backbone forward"), torch.no_grad():
            tokens(stage.teacher.backbone, global_crops)
        with clock.timer("bare: student backbone forward"):
            cls, patches = tokens(backbone, global_crops)
            loss = cls.float().mean() + patches.float().mean()
            if len(local_crops):
                loss = loss + tokens(backbone, local_crops)[0].float().mean()
    with clock.timer("bare: student backbone backward"):
        loss.backward()
    backbone.zero_grad(set_to_none=True)


# --- memory ----------------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory per phase: resident set sampled by a thread on CPU, ``max_memory_allocated`` on CUDA."""

    def __init__(self, device: torch.device, interval_s: float = 0.002) -> None:
        self.device, self.interval_s = device, interval_s
        self.peaks: dict[str, int] = defaultdict(int)
        self._phase: str | None = None
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if device.type == "cpu":
            self._thread.start()

    def current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            phase = self._phase
            if phase is not None:
                self.peaks[phase] = max(self.peaks[phase], self._process.memory_info().rss)

    @contextlib.contextmanager
    def phase(self, label: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._phase = label
        try:
            yield
        finally:
            self._phase = None
            if self.device.type == "cuda":
                self.peaks[label] = max(self.peaks[label], torch.cuda.max_memory_allocated(self.device))

    def close(self) -> None:
        self._stop.set()


# --- the measurement -------------------------------------------------------------------------------------------


def device_sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def measure_steps(stage: Stage, batches: Iterator[dict], steps: int, warmup: int,
                  memory: PeakMemory) -> list[dict[str, float]]:
    """Per timed step: every part of the full step, the loader wait and the bare step, in seconds."""
    clock = StepClock(device_sync(stage.device))
    records = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        batch = next(batches)
        waited = time.perf_counter() - start
        # Alternate which runs first: the loader's worker makes the next batch right after ``next`` returns and
        # slows whatever runs then (on a CPU it shares the cores); alternating also evens out load drift.
        for full in (True, False) if index % 2 == 0 else (False, True):
            if full:
                with memory.phase("full step"), instrumented(stage, clock):
                    start = clock.now()
                    stage.train_step(batch)
                    clock.seconds["step"] = clock.now() - start
            else:
                with memory.phase("bare step"):
                    bare_step(stage, batch, clock)
        record = clock.take()
        record["loader wait"] = waited
        if index >= warmup:
            records.append(record)
        print(f"  step {index}{' (warm-up)' if index < warmup else ''}: {record['step']:.2f} s, bare "
              f"{sum(v for k, v in record.items() if k.startswith('bare')):.2f} s, loader wait {waited:.2f} s",
              file=sys.stderr, flush=True)
    return records


def derived(record: dict[str, float]) -> dict[str, float]:
    """The table's parts of one step: nested timers unnested, the untimed remainder as "other"."""
    parts = {
        "teacher: backbone forward": record["teacher"] - record.get("teacher heads", 0.0),
        "teacher: heads forward": record.get("teacher heads", 0.0),
        "student: backbone forward": record["student"] - record.get("student heads", 0.0),
        "student: heads forward": record.get("student heads", 0.0),
        "losses: targets, cross-entropies, centres": record["losses"],
        "backward: losses": record["backward: losses"],
        "backward: student heads": record["backward: student heads"],
        "backward: student backbone": record["backward: student backbone"],
        "optimizer: zero_grad, grad clip, AdamW step": record["zero_grad"] + record["grad clip"]
        + record["optimizer step"],
        "EMA update": record["EMA"],
    }
    parts["other: schedules, crops to device, scaler"] = record["step"] - sum(parts.values())
    bare = {key: value for key, value in record.items() if key.startswith("bare: ")}
    return {**parts, "step": record["step"], "loader wait": record["loader wait"], **bare,
            "bare": sum(bare.values()),
            "heads + losses + optimizer + EMA": sum(v for k, v in parts.items() if k.startswith(
                ("teacher: heads", "student: heads", "losses", "backward: losses", "backward: student heads",
                 "optimizer", "EMA")))}


def medians(records: list[dict[str, float]]) -> dict[str, float]:
    """Median of every part; the overhead is the median of the paired ratios (a step and the bare step after it)."""
    parts = [derived(record) for record in records]
    return {**{key: statistics.median(part[key] for part in parts) for key in parts[0]},
            "overhead": statistics.median(part["step"] / part["bare"] - 1 for part in parts),
            "overhead with loader": statistics.median((part["step"] + part["loader wait"]) / part["bare"] - 1
                                                      for part in parts)}


def macs_per_sample(setup: Setup) -> dict[str, float]:
    """Multiply-adds per sample (2 global + n local crops) from the layer shapes, built on the meta device.

    Backbones count weights × tokens (attention's token-by-token products are left out: ≤ 5 % here);
    the student's forward and backward count 3 forwards.
    """
    config = setup.config()
    with torch.device("meta"):
        teacher, student = (build_model(name, device="meta") for name in (setup.teacher, setup.student))
        teacher_heads = make_heads(teacher.embed_dim, config.heads)
        student_heads = make_heads(student.embed_dim, config.heads)

    def weights(module: nn.Module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear | nn.Conv2d))

    patch_px = teacher.patch_embed.patch_size[0]
    n_global, prefix = 2, teacher.num_prefix_tokens
    global_patches = (setup.global_px // patch_px) ** 2
    local_tokens = (setup.local_px // patch_px) ** 2 + prefix
    global_tokens = global_patches + prefix
    heads_macs = (weights(teacher_heads["dino_head"]) * n_global
                  + weights(teacher_heads["ibot_head"]) * n_global * global_patches
                  + 3 * weights(student_heads["dino_head"]) * (n_global + setup.local_crops)
                  + 3 * weights(student_heads["ibot_head"]) * n_global * global_patches)
    return {
        "teacher backbone": weights(teacher) * n_global * global_tokens,
        "student backbone": 3 * weights(student) * (n_global * global_tokens + setup.local_crops * local_tokens),
        "heads": heads_macs,
    }


def heads_share(setup: Setup) -> float:
    macs = macs_per_sample(setup)
    return macs["heads"] / sum(macs.values())


# --- the table -------------------------------------------------------------------------------------------------


def table(times: dict[str, float], memory: PeakMemory, before_bytes: int, built_bytes: int, setup: Setup,
          extra_rows: list[str] = (), loader: bool = True) -> str:
    """The markdown table of one run: parts of the step, the bare step, the overhead, memory, the goal.

    ``loader=False`` (batches made in memory) leaves the loader wait out.
    """
    step, bare, wait = times["step"], times["bare"], times["loader wait"]
    unit = "GPU memory allocated" if memory.device.type == "cuda" else "RSS"

    def row(label: str, seconds: float | None = None, of_step: bool = True, mib: float | None = None,
            notes: str = "") -> str:
        ms = "" if seconds is None else f"{seconds * 1e3:,.0f}"
        share = f"{seconds / step:.1%}" if seconds is not None and of_step else ""
        return f"| {label} | {ms} | {share} | {'' if mib is None else f'{mib:,.0f}'} | {notes} |"

    parts = [key for key in times if key.split(":")[0] in ("teacher", "student", "losses", "backward", "optimizer",
                                                          "other") or key == "EMA update"]
    overhead, with_data = times["overhead"], times["overhead with loader"]
    share_here, share_paper = heads_share(setup), heads_share(PAPER_SETUP)
    lines = [
        "| measure | ms / step | share of step | MiB | notes |",
        "|---|---:|---:|---:|---|",
        *([row("loader wait (`next` on the loader)", wait, notes=f"{setup.loader_workers} loader worker(s); "
               "not part of `train_step`, share given against it")] if loader else []),
        *(row(part, times[part]) for part in parts),
        row("**`Stage.train_step`, whole**", step, notes=f"{setup.batch / step:,.1f} samples/s without the loader"
            + (f", {setup.batch / (step + wait):,.1f} with it" if loader else "")),
        row("bare: teacher backbone forward", times["bare: teacher backbone forward"], of_step=False),
        row("bare: student backbone forward", times["bare: student backbone forward"], of_step=False),
        row("bare: student backbone backward", times["bare: student backbone backward"], of_step=False),
        row("**bare step** (no heads, losses, optimizer, EMA)", bare, of_step=False,
            notes="teacher forward + student forward/backward on the same batch"),
        row("heads + losses + optimizer + EMA, inside the step", times["heads + losses + optimizer + EMA"],
            notes=f"heads' share of the multiply-adds: {share_here:.1%} here, {share_paper:.1%} for "
            "H-optimus-0 → H0-mini at 224/98 px with 131,072 prototypes"),
        row(f"{unit} before building the Stage", mib=before_bytes / MIB,
            notes="the process: Python, torch, the loader's imports" if unit == "RSS" else ""),
        row(f"{unit} after building the Stage", mib=built_bytes / MIB,
            notes="teacher, student, EMA, heads, schedules; before the first step (AdamW state comes after)"),
        row(f"peak {unit}, full steps", mib=memory.peaks["full step"] / MIB),
        row(f"peak {unit}, bare steps", mib=memory.peaks["bare step"] / MIB),
        *extra_rows,
        row(f"goal: step ≤ bare × {1 + GOAL_OVERHEAD:.2f} (overhead ≤ {GOAL_OVERHEAD:.0%})",
            notes=f"overhead {overhead:.1%}" + (f" without the loader wait, {with_data:.1%} with it" if loader else "")
            + f" (medians of the paired ratios; ratio of the medians {step / bare - 1:.1%}): "
            f"**{'met' if overhead <= GOAL_OVERHEAD else 'not met'}**"),
    ]
    return "\n".join(lines)


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
    for path in SLIDES:
        if slide_id_from_path(path) not in done:
            tile_slide(SlideSpec(path, slide_id_from_path(path)), store, config)
    return root


def batch_seconds(config: DistillConfig, store: Path, repeats: int = 3) -> float:
    """Seconds to make one batch in this process, as a loader worker makes it (the stream's first steps)."""
    stream = TileStream([str(store)], seed=config.train.seed, global_batch=config.train.batch_size_total, rank=0,
                        world=1, transform=MultiCrop(config.crops), window_shards=config.train.window_shards)
    seconds = []
    for step in range(repeats):
        start = time.perf_counter()
        stream.batch(step)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".work" / "distillation",
                        help="the tile store")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the loader worker takes another core)")
    parser.add_argument("--loader-workers", type=int, help=f"default {CPU_SETUP.loader_workers}")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 steps: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 2, 1
    return args


def main() -> None:
    args = _parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    register_bench_models()
    setup = QUICK_SETUP if args.quick else CPU_SETUP
    if args.loader_workers is not None:
        setup = dataclasses.replace(setup, loader_workers=args.loader_workers)
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = tile_store(args.workdir)
    device = torch.device("cpu")
    memory = PeakMemory(device)
    before = memory.current()
    stage = build_stage(setup, device)
    built = memory.current()
    batch_s = batch_seconds(stage.config, store)
    batches = distill_train._batches(stage.config, [str(store)], 0)
    next(batches)  # start the loader's workers (forkserver: each imports torch) before anything is timed
    records = measure_steps(stage, batches, args.steps, args.warmup, memory)
    memory.close()
    times = medians(records)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\n{os.cpu_count()} cores, {args.threads} torch thread(s), load average "
          f"{os.getloadavg()[0]:.1f}; {setup.teacher} → {setup.student}, batch {setup.batch} × (2 × "
          f"{setup.global_px} px + {setup.local_crops} × {setup.local_px} px crops), {setup.prototypes:,} prototypes, "
          f"head MLP {setup.hidden_dim}, {setup.precision}; medians of {args.steps} steps after {args.warmup} warm-up. "
          f"Benchmark took {time.perf_counter() - started:.0f} s.\n")
    print(table(times, memory, before, built, setup,
                [f"| ru_maxrss (whole process) | | | {max_rss / MIB:,.0f} | check on the sampled peaks |",
                 f"| loader: one batch made in this process | {batch_s * 1e3:,.0f} | | | what the worker spends "
                 "on each batch: JPEG decode and multi-crop, median of 3, before training |"]))


if __name__ == "__main__":
    main()
