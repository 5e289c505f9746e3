"""The distillation loop: DINO + iBOT from a frozen teacher into a student, one process per device.

One call of :func:`train` runs a whole run directory to its end, resuming
from its latest checkpoint. With the teacher-head mode ``fit`` it first runs
a head stage (student = the frozen teacher backbone with trainable heads,
teacher = their EMA), whose EMA heads then serve as the teacher's heads.
Under ``torchrun`` each process takes its slice of every global batch
(:class:`~pipeline.distill.data.TileStream`) and DDP or FSDP averages the
gradients (:mod:`pipeline.distill.sharding`), so N processes compute what one
process with the same global batch would.

Run directory::

    RUN/config.yaml             the config the run was started with
    RUN/held_out.json           the tiles held out of training (a resume must hold out the same)
    RUN/metrics.jsonl           one JSON object per logged step (step, loss, gradient norms, …), then
                                one with the teacher-student agreement ("stage": "agreement")
    RUN/checkpoints/<stage>-<step>.pt   consolidated checkpoints (rank 0 writes them)
    RUN/teacher_heads.pt        the fitted teacher heads (mode "fit")
    RUN/student.safetensors     the exported EMA student, and RUN/MODEL_CARD.md
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from pipeline.cpu_memory import keep_freed_memory_for_reuse
from pipeline.distill.agreement import measure_agreement
from pipeline.distill.config import DistillConfig, random_teacher_warning
from pipeline.distill.data import TileStream, make_loader
from pipeline.distill.export import export_student
from pipeline.distill.held_out import HeldOutSplit
from pipeline.distill.losses import TokenRegressionLoss
from pipeline.distill.networks import StudentSide, TeacherSide, init_seed, make_heads, run_identity, seeded_model
from pipeline.distill.objective import Objective
from pipeline.distill.optim import clip_per_module, param_groups, set_learning_rates
from pipeline.distill.prototypes import DistilledHeads
from pipeline.distill.run_directory import (
    CheckpointError,
    RunDirectory,
    read_checkpoint,
    read_teacher_heads,
)
from pipeline.distill.schedules import Schedules
from pipeline.distill.sharding import (
    SHARDINGS,
    Sharding,
    distributed_wrapper,
    load_whole_optimizer_state,
    load_whole_state,
    shard,
    shard_each,
    shard_mesh,
    whole_optimizer_state,
    whole_state,
)

HEADS, DISTILL = "heads", "distill"


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class Stage:
    """One training stage: its networks, optimiser, EMA, objective and schedules, and how to save them."""

    def __init__(
        self,
        name: str,
        config: DistillConfig,
        teacher_backbone: nn.Module,
        device: torch.device,
        teacher_heads: nn.ModuleDict | None,
        mesh: DeviceMesh | None = None,
        identity: dict | None = None,
    ) -> None:
        self.name, self.config, self.device = name, config, device
        # What a checkpoint must match to be resumed here: the networks' names, seeds and weights.
        self.identity = run_identity(config) if identity is None else identity
        teacher_dim = teacher_backbone.embed_dim
        with_heads = config.heads.teacher_heads != "none"
        if name == HEADS:
            backbone, train_backbone = teacher_backbone, False
        else:  # the same initial student in every process and at every start of the run
            backbone = seeded_model(config.models.student, config.train.seed, device=device)
            train_backbone = True
        torch.manual_seed(init_seed(f"{name}-heads", config.train.seed))
        if name == HEADS:
            heads = make_heads(teacher_dim, config.heads)
        else:
            if with_heads:
                heads = make_heads(backbone.embed_dim, config.heads)
            else:
                heads = nn.ModuleDict({"regression": TokenRegressionLoss(backbone.embed_dim, teacher_dim)})
        self.student = StudentSide(backbone, heads, train_backbone=train_backbone).to(device)
        # The EMA shares a frozen backbone instead of copying it (a ViT-g copy would be 4.5 GB for nothing).
        ema_backbone = copy.deepcopy(backbone) if train_backbone else backbone
        self.ema = StudentSide(ema_backbone, copy.deepcopy(heads).requires_grad_(False), train_backbone=False)
        fixed_heads = self.ema.heads if name == HEADS else teacher_heads
        self.teacher = TeacherSide(teacher_backbone, fixed_heads if with_heads else None)
        if mesh is not None:  # the EMA is sharded like the student, so that its update stays shard by shard
            for side in (self.student, self.ema):
                shard(side.backbone, mesh)
                shard_each(side.heads, mesh)
            shard_each(self.teacher.heads, mesh)
        ema_parameters = dict(self.ema.named_parameters())
        self._ema_pairs = [
            (ema_parameters[name], parameter)
            for name, parameter in self.student.named_parameters()
            if parameter.requires_grad
        ]
        self.objective = Objective(config, backbone.embed_dim, teacher_dim, with_heads).to(device)
        self.iterations = config.heads.fit_iterations if name == HEADS else config.train.iterations
        self.schedules = Schedules.from_config(config, self.iterations)
        self.optimizer = torch.optim.AdamW(param_groups(self.student, config.optim), lr=0.0, betas=config.optim.betas)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")
        self.model = distributed_wrapper(self.student, mesh)
        self.step = 0

    def _learned(self, side: StudentSide) -> nn.Module:
        """What a checkpoint must keep of a side: all of it, or only the heads when the backbone is frozen."""
        return side if side.train_backbone or side is self.ema and self.student.train_backbone else side.heads

    def state_dict(self) -> dict:
        """Whole tensors under parameter names, on rank 0 only when sharded: every process must call it."""
        return {
            "stage": self.name,
            "step": self.step,
            "identity": self.identity,
            "student": whole_state(self._learned(self.student)),
            "ema": whole_state(self._learned(self.ema)),
            "optimizer": whole_optimizer_state(self.student, self.optimizer),
            "scaler": self.scaler.state_dict(),
            "objective": self.objective.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state``; raises ``ValueError`` if it was made with other networks (teacher, seeds)."""
        if state.get("identity") != self.identity:
            raise ValueError(
                f"made with {state.get('identity')}, not {self.identity}: the teacher or the "
                "initialisation differs; use another --out or restore the original teacher"
            )
        self.step = state["step"]
        load_whole_state(self._learned(self.student), state["student"])
        load_whole_state(self._learned(self.ema), state["ema"])
        load_whole_optimizer_state(self.student, self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state["objective"])

    def _autocast(self):
        precision = self.config.train.precision
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimisation step on this process's slice of the global batch."""
        step, schedules = self.step, self.schedules
        set_learning_rates(
            self.optimizer,
            float(schedules.lr[step]),
            float(schedules.prototype_lr[step]),
            float(schedules.weight_decay[step]),
        )
        global_crops = batch["global_crops"].flatten(0, 1).to(self.device, non_blocking=True)
        local_crops = batch["local_crops"].flatten(0, 1).to(self.device, non_blocking=True)
        with self._autocast():
            teacher = self.teacher(global_crops)
            student = self.model(global_crops, local_crops)
            regression = self.student.heads["regression"] if "regression" in self.student.heads else None
            losses = self.objective(student, teacher, float(schedules.teacher_temp[step]), regression)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        norms = clip_per_module(self.student, self.config.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._update_ema(float(schedules.momentum[step]))
        self.step += 1
        return {
            **{name: value.detach() for name, value in losses.items()},
            **{f"grad_norm_{name}": norm.detach() for name, norm in norms.items()},
        }

    @torch.no_grad()
    def _update_ema(self, momentum: float) -> None:
        ema = [e for e, _ in self._ema_pairs]
        torch._foreach_mul_(ema, momentum)
        torch._foreach_add_(ema, [p.detach() for _, p in self._ema_pairs], alpha=1.0 - momentum)


def _batches(config: DistillConfig, stores: list[str], start_step: int) -> Iterator[dict]:
    rank, world = _rank_world()
    stream = TileStream.for_run(config, list(stores), rank, world, start_step)
    for _, batch in make_loader(stream, config.train.loader_workers):
        yield batch


def _mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    stacked = torch.stack([values[name].float() for name in sorted(values)])
    if dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return {name: float(value) for name, value in zip(sorted(values), stacked)}


def run_stage(stage: Stage, run: RunDirectory, stores: list[str]) -> None:
    """Train ``stage`` to its last iteration from wherever its latest checkpoint left it."""
    rank, _ = _rank_world()
    checkpoint = run.latest_checkpoint(stage.name)
    if checkpoint is not None:
        try:
            stage.load_state_dict(read_checkpoint(checkpoint))
        except ValueError as error:
            raise CheckpointError(checkpoint, str(error).removeprefix(f"{checkpoint}: ")) from None
    if rank == 0:
        run.truncate_metrics(stage.name, stage.step)
    if stage.step >= stage.iterations:
        return
    config = stage.config.train
    started, first_step = time.perf_counter(), stage.step
    for batch in _batches(stage.config, stores, stage.step):
        losses = stage.train_step(batch)
        if stage.step % config.log_every == 0 or stage.step == stage.iterations:
            values = _mean_over_ranks(losses)
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"{stage.name} step {stage.step}: loss is not finite: {values}")
            elapsed = time.perf_counter() - started
            rate = (stage.step - first_step) * config.batch_size_total / elapsed
            if rank == 0:
                run.log(
                    {
                        "stage": stage.name,
                        "step": stage.step,
                        **values,
                        "lr": float(stage.schedules.lr[stage.step - 1]),
                        "teacher_temp": float(stage.schedules.teacher_temp[stage.step - 1]),
                        "images_per_s": round(rate, 2),
                        "eta_s": round((stage.iterations - stage.step) * config.batch_size_total / max(rate, 1e-9), 1),
                    }
                )
        if stage.step % config.checkpoint_every == 0 or stage.step == stage.iterations:
            state = stage.state_dict()  # a collective when sharded
            if rank == 0:
                run.save_checkpoint(stage.name, stage.step, state)
        if stage.step >= stage.iterations:
            break


def _teacher_heads(
    config: DistillConfig,
    run: RunDirectory,
    teacher: nn.Module,
    device: torch.device,
    stores: list[str],
    mesh: DeviceMesh | None,
    identity: dict,
) -> nn.ModuleDict | None:
    """The fixed teacher heads of the distillation stage, by the configured mode (whole, not yet sharded)."""
    mode = config.heads.teacher_heads
    if mode == "none":
        return None
    heads = make_heads(teacher.embed_dim, config.heads).to(device)
    if mode == "checkpoint":
        heads.load_state_dict(read_teacher_heads(Path(config.heads.teacher_heads_path), device))
        return heads
    stage = Stage(HEADS, config, teacher, device, None, mesh, identity)
    run_stage(stage, run, stores)
    heads.load_state_dict(whole_state(stage.ema.heads, on_every_rank=True))
    if _rank_world()[0] == 0:
        torch.save(heads.state_dict(), run.teacher_heads)
    return heads


def train(
    config: DistillConfig, stores: list[str], out: Path | str, device: str = "cpu", sharding: Sharding = "ddp"
) -> Path:
    """Run (or resume) a distillation to its end and export the EMA student; returns the exported file.

    Raises :class:`~pipeline.distill.held_out.HeldOutMismatch` when ``out`` holds a run whose held-out
    tiles differ from those of ``stores`` (in any order), and ``CheckpointError`` for another run's checkpoint.

    ``sharding`` matters only with several processes (see :mod:`pipeline.distill.sharding`). A teacher
    without weights is a random network drawn from the run's seed: fine for the tiny test models,
    warned about (``RuntimeWarning``) for any other.
    """
    run = RunDirectory(out)
    rank, _ = _rank_world()
    if rank == 0:
        run.start(config)
        run.keep_held_out(HeldOutSplit.of(stores, config.train.agreement_tiles, config.train.agreement_split).record())
        warning = random_teacher_warning(config)
        if warning:
            warnings.warn(warning, RuntimeWarning, stacklevel=2)
    if dist.is_initialized():
        dist.barrier()
    target = torch.device(device)
    if target.type == "cpu":
        keep_freed_memory_for_reuse()  # the losses' large tensors would page-fault anew every step
    mesh = shard_mesh(sharding, target)
    identity = run_identity(config)
    models = config.models
    teacher = seeded_model(
        models.teacher,
        config.train.seed,
        models.teacher_weights,
        device=target,
        layerscale=models.random_teacher_layerscale,
    )
    if mesh is not None:
        shard(teacher, mesh)
    heads = _teacher_heads(config, run, teacher, target, stores, mesh, identity)
    stage = Stage(DISTILL, config, teacher, target, heads, mesh, identity)
    run_stage(stage, run, stores)
    distilled = None
    if heads is not None:
        objective = stage.objective
        distilled = DistilledHeads(stage.teacher.heads, stage.ema.heads, objective.dino.center, objective.ibot.center)
    agreed = measure_agreement(config, stores, teacher, stage.ema.backbone, target, distilled)
    student = whole_state(stage.ema.backbone)
    if rank == 0:
        if agreed:
            run.log({"stage": "agreement", "step": stage.step, **agreed})
        export_student(student, config, stores, stage.step, run.student, agreed)
    if dist.is_initialized():
        dist.barrier()
    return run.student


def main(argv: list[str] | None = None) -> None:
    """``torchrun`` entry point.

    ``torchrun --nproc-per-node N -m pipeline.distill.train --config C --tiles S --out R``.
    """
    parser = argparse.ArgumentParser(prog="python -m pipeline.distill.train")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--tiles", required=True, nargs="+")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda or auto; under torchrun each rank takes cuda:LOCAL_RANK"
    )
    parser.add_argument(
        "--sharding",
        choices=SHARDINGS,
        default="ddp",
        help="ddp: every process holds whole networks; fsdp: parameters sharded across processes",
    )
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    try:
        train(DistillConfig.from_yaml(args.config), args.tiles, args.out, device, args.sharding)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
