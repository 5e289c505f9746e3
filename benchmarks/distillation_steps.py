"""The measuring half of the distillation benchmarks: a real ``Stage``, timers around its step, memory.

Loaded by path by ``benchmarks/distillation.py`` (CPU) and ``benchmarks/distillation_gpu.py`` (GPU).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from torch import nn

from pipeline.cpu_memory import keep_freed_memory_for_reuse
from pipeline.distill.config import DistillConfig
from pipeline.distill.networks import make_heads, tokens
from pipeline.distill.train import DISTILL, Stage
from pipeline.models import build_model
from pipeline.models.registry import MODEL_SPECS, ViTSpec

REPO = Path(__file__).resolve().parents[1]
SLIDES = (
    REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs",
    REPO / "tests" / "data" / "slides" / "OS-1-detail.ome.tif",
)
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
        return DistillConfig.model_validate(
            {
                "models": {"teacher": self.teacher, "student": self.student},
                # Random fixed teacher heads are passed to the Stage directly (as mode "checkpoint" would load them).
                "heads": {"prototypes": self.prototypes, "hidden_dim": self.hidden_dim, "teacher_heads": "fit"},
                "train": {
                    "batch_size_total": self.batch,
                    "iterations": 100_000,
                    "precision": self.precision,
                    "loader_workers": self.loader_workers,
                    "piece_tiles": 16,
                    "window_tiles": 64,
                },
                "crops": {
                    "global_crop_size": self.global_px,
                    "local_crop_size": self.local_px,
                    "local_crops_number": self.local_crops,
                },
            }
        )


CPU_SETUP = Setup(
    "bench-vit-s14",
    "bench-vit-ti14",
    batch=16,
    prototypes=4096,
    hidden_dim=512,
    global_px=112,
    local_px=56,
    local_crops=8,
    precision="fp32",
    loader_workers=1,
)
QUICK_SETUP = Setup(
    "tiny-teacher",
    "tiny-student",
    batch=4,
    prototypes=256,
    hidden_dim=64,
    global_px=56,
    local_px=28,
    local_crops=2,
    precision="fp32",
    loader_workers=0,
)
PAPER_SETUP = Setup(
    "h-optimus-0",
    "h0-mini",
    batch=32,
    prototypes=131_072,
    hidden_dim=2048,
    global_px=224,
    local_px=98,
    local_crops=8,
    precision="bf16",
)

GOAL_OVERHEAD = 0.15


def register_bench_models() -> None:
    """Make the small twins buildable by name (``build_model``), as the Stage builds its student."""
    for name, spec in BENCH_MODELS.items():
        MODEL_SPECS.setdefault(name, spec)


def build_stage(setup: Setup, device: torch.device) -> Stage:
    """A distillation Stage with a random, informative teacher (LayerScale 1) and random fixed teacher heads."""
    config = setup.config()
    if device.type == "cpu":  # as pipeline.distill.train.train does on a CPU
        keep_freed_memory_for_reuse()
    torch.manual_seed(1)
    teacher = build_model(setup.teacher, device=device, dynamic_img_size=True)
    with torch.no_grad():
        for name, parameter in teacher.named_parameters():
            if name.endswith(".gamma"):
                parameter.fill_(1.0)
    return Stage(DISTILL, config, teacher, device, make_heads(teacher.embed_dim, config.heads).to(device))


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

    hooks = [
        stage.student.backbone.norm.register_full_backward_pre_hook(backbone_reached),
        *(head.register_full_backward_pre_hook(heads_reached) for head in stage.student.heads.values()),
    ]
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
        cuda = self.device.type == "cuda"
        return torch.cuda.memory_allocated(self.device) if cuda else self._process.memory_info().rss

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


def measure_steps(
    stage: Stage, batches: Iterator[dict], steps: int, warmup: int, memory: PeakMemory
) -> list[dict[str, float]]:
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
        record = {**clock.take(), "loader wait": waited}
        if index >= warmup:
            records.append(record)
        print(
            f"  step {index}{' (warm-up)' if index < warmup else ''}: {record['step']:.2f} s, bare "
            f"{sum(v for k, v in record.items() if k.startswith('bare')):.2f} s, loader wait {waited:.2f} s",
            file=sys.stderr,
            flush=True,
        )
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
        "optimizer: zero_grad, grad clip, AdamW step": record["zero_grad"]
        + record["grad clip"]
        + record["optimizer step"],
        "EMA update": record["EMA"],
    }
    parts["other: schedules, crops to device, scaler"] = record["step"] - sum(parts.values())
    bare = {key: value for key, value in record.items() if key.startswith("bare: ")}
    return {
        **parts,
        "step": record["step"],
        "loader wait": record["loader wait"],
        **bare,
        "bare": sum(bare.values()),
        "heads + losses + optimizer + EMA": sum(
            v
            for k, v in parts.items()
            if k.startswith(
                (
                    "teacher: heads",
                    "student: heads",
                    "losses",
                    "backward: losses",
                    "backward: student heads",
                    "optimizer",
                    "EMA",
                )
            )
        ),
    }


def medians(records: list[dict[str, float]]) -> dict[str, float]:
    """Median of every part; the overhead is the median of the paired ratios (a step and the bare step after it)."""
    parts = [derived(record) for record in records]
    return {
        **{key: statistics.median(part[key] for part in parts) for key in parts[0]},
        "overhead": statistics.median(part["step"] / part["bare"] - 1 for part in parts),
        "overhead with loader": statistics.median(
            (part["step"] + part["loader wait"]) / part["bare"] - 1 for part in parts
        ),
    }


def macs_per_sample(setup: Setup) -> dict[str, float]:
    """Multiply-adds per sample (2 global + n local crops) from the layer shapes, built on the meta device.

    Backbones count weights × tokens (attention's token-by-token products are left out: ≤ 5 % here);
    the student's forward and backward count 3 forwards.
    """
    config = setup.config()
    with torch.device("meta"):
        teacher, student = (build_model(name, device="meta") for name in (setup.teacher, setup.student))
        teacher_heads, student_heads = (make_heads(model.embed_dim, config.heads) for model in (teacher, student))

    def weights(module: nn.Module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear | nn.Conv2d))

    patch_px = teacher.patch_embed.patch_size[0]
    n_global, prefix = 2, teacher.num_prefix_tokens
    global_patches = (setup.global_px // patch_px) ** 2
    local_tokens = (setup.local_px // patch_px) ** 2 + prefix
    global_tokens = global_patches + prefix
    heads_macs = (
        weights(teacher_heads["dino_head"]) * n_global
        + weights(teacher_heads["ibot_head"]) * n_global * global_patches
        + 3 * weights(student_heads["dino_head"]) * (n_global + setup.local_crops)
        + 3 * weights(student_heads["ibot_head"]) * n_global * global_patches
    )
    return {
        "teacher backbone": weights(teacher) * n_global * global_tokens,
        "student backbone": 3 * weights(student) * (n_global * global_tokens + setup.local_crops * local_tokens),
        "heads": heads_macs,
    }


def heads_share(setup: Setup) -> float:
    macs = macs_per_sample(setup)
    return macs["heads"] / sum(macs.values())


# --- the table -------------------------------------------------------------------------------------------------


def table(
    times: dict[str, float],
    memory: PeakMemory,
    before_bytes: int,
    built_bytes: int,
    setup: Setup,
    extra_rows: list[str] = (),
    loader: bool = True,
) -> str:
    """The markdown table of one run: parts of the step, the bare step, the overhead, memory, the goal.

    ``loader=False`` (batches made in memory) leaves the loader wait out.
    """
    step, bare, wait = times["step"], times["bare"], times["loader wait"]
    unit = "GPU memory allocated" if memory.device.type == "cuda" else "RSS"

    def row(
        label: str, seconds: float | None = None, of_step: bool = True, mib: float | None = None, notes: str = ""
    ) -> str:
        ms = "" if seconds is None else f"{seconds * 1e3:,.0f}"
        share = f"{seconds / step:.1%}" if seconds is not None and of_step else ""
        return f"| {label} | {ms} | {share} | {'' if mib is None else f'{mib:,.0f}'} | {notes} |"

    parts = [
        key
        for key in times
        if key.split(":")[0] in ("teacher", "student", "losses", "backward", "optimizer", "other")
        or key == "EMA update"
    ]
    overhead, with_data = times["overhead"], times["overhead with loader"]
    share_here, share_paper = heads_share(setup), heads_share(PAPER_SETUP)
    lines = [
        "| measure | ms / step | share of step | MiB | notes |",
        "|---|---:|---:|---:|---|",
        *(
            [
                row(
                    "loader wait (`next` on the loader)",
                    wait,
                    notes=f"{setup.loader_workers} loader worker(s); not part of `train_step`, share given against it",
                )
            ]
            if loader
            else []
        ),
        *(row(part, times[part]) for part in parts),
        row(
            "**`Stage.train_step`, whole**",
            step,
            notes=f"{setup.batch / step:,.1f} samples/s without the loader"
            + (f", {setup.batch / (step + wait):,.1f} with it" if loader else ""),
        ),
        *(row(part, times[part], of_step=False) for part in times if part.startswith("bare: ")),
        row(
            "**bare step** (no heads, losses, optimizer, EMA)",
            bare,
            of_step=False,
            notes="teacher forward + student forward/backward on the same batch",
        ),
        row(
            "heads + losses + optimizer + EMA, inside the step",
            times["heads + losses + optimizer + EMA"],
            notes=f"heads' share of the multiply-adds: {share_here:.1%} here, {share_paper:.1%} for "
            "H-optimus-0 → H0-mini at 224/98 px with 131,072 prototypes",
        ),
        row(
            f"{unit} before building the Stage",
            mib=before_bytes / MIB,
            notes="the process: Python, torch, the loader's imports" if unit == "RSS" else "",
        ),
        row(
            f"{unit} after building the Stage",
            mib=built_bytes / MIB,
            notes="teacher, student, EMA, heads, schedules; before the first step (AdamW state comes after)",
        ),
        *(row(f"peak {unit}, {phase}s", mib=memory.peaks[phase] / MIB) for phase in ("full step", "bare step")),
        *extra_rows,
        row(
            f"goal: step ≤ bare × {1 + GOAL_OVERHEAD:.2f} (overhead ≤ {GOAL_OVERHEAD:.0%})",
            notes=f"overhead {overhead:.1%}"
            + (f" without the loader wait, {with_data:.1%} with it" if loader else "")
            + f" (medians of the paired ratios; ratio of the medians {step / bare - 1:.1%}): "
            f"**{'met' if overhead <= GOAL_OVERHEAD else 'not met'}**",
        ),
    ]
    return "\n".join(lines)
