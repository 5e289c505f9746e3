"""Every distillation setting in one typed, immutable config, loaded from YAML.

Defaults are the paper's Table 4 (H0-mini from H-Optimus-0) and, where the
paper is silent, DINOv2's ``ssl_default_config.yaml``: ``configs/distill/h0-mini.yaml``
spells them out; ``configs/distill/tiny-cpu.yaml`` shrinks everything to run
on two CPU cores in minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.distill.augment import MultiCropConfig


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelsConfig(_Frozen):
    teacher: str = Field("h-optimus-0", description="model name (pipeline.models.build_model)")
    teacher_weights: str | None = Field(None, description="local weights file of the teacher backbone")
    student: str = Field("h0-mini", description="model name of the student (randomly initialised)")


class HeadsConfig(_Frozen):
    """DINOv2-style projection heads, and where the teacher's come from (the public teacher has none)."""

    prototypes: int = Field(131_072, gt=0)
    hidden_dim: int = Field(2048, gt=0)
    dino_bottleneck_dim: int = Field(384, gt=0)
    ibot_bottleneck_dim: int = Field(256, gt=0)
    layers: int = Field(3, ge=1)
    teacher_heads: Literal["checkpoint", "fit", "none"] = Field(
        "fit",
        description="checkpoint: load them (teacher_heads_path); fit: a first stage trains them on the frozen "
        "teacher backbone; none: no heads, regress student tokens onto the teacher's through projectors",
    )
    teacher_heads_path: str | None = Field(None, description="checkpoint with dino_head.* and ibot_head.* keys")
    fit_iterations: int = Field(2_000, ge=1, description="iterations of the head-fitting stage (mode 'fit')")


class LossConfig(_Frozen):
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.07, gt=0, description="after the warm-up")
    warmup_teacher_temp: float = Field(0.04, gt=0)
    teacher_temp_warmup_epochs: int = Field(30, ge=0)
    centering: Literal["centering", "sinkhorn_knopp"] = "centering"
    center_momentum: float = Field(0.9, ge=0, lt=1)
    dino_weight: float = Field(1.0, ge=0)
    ibot_weight: float = Field(1.0, ge=0)


class OptimConfig(_Frozen):
    base_lr: float = Field(0.004, gt=0, description="DINOv2's, scaled by sqrt(batch / 1024)")
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: int = Field(16, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    clip_grad: float = Field(3.0, gt=0)
    ema_momentum: float = Field(0.994, ge=0, le=1, description="EMA of the student, rising to 1 by the end")
    freeze_prototypes_epochs: int = Field(
        1, ge=0, description="epochs during which the heads' prototype layers do not learn (DINOv2)"
    )
    betas: tuple[float, float] = (0.9, 0.999)


class TrainConfig(_Frozen):
    batch_size_total: int = Field(2048, gt=0, description="global batch over every process")
    iterations: int = Field(105_000, gt=0)
    iterations_per_epoch: int = Field(1250, gt=0, description="an 'epoch' is this many iterations (DINOv2)")
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    seed: int = 0
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(2_500, gt=0)
    loader_workers: int = Field(8, ge=0)
    piece_tiles: int = Field(64, gt=0, description="consecutive tiles of one shard read together (one read)")
    window_tiles: int = Field(8192, gt=0, description="tiles shuffled together, from window_tiles / piece_tiles "
                              "pieces of as many slides; bounds each loader worker's memory (~27 kB a tile)")


class DistillConfig(_Frozen):
    models: ModelsConfig = ModelsConfig()
    heads: HeadsConfig = HeadsConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    crops: MultiCropConfig = MultiCropConfig()

    @model_validator(mode="after")
    def _heads_source(self) -> DistillConfig:
        if self.heads.teacher_heads == "checkpoint" and not self.heads.teacher_heads_path:
            raise ValueError("heads.teacher_heads 'checkpoint' needs heads.teacher_heads_path")
        return self

    @classmethod
    def from_yaml(cls, path: Path | str) -> DistillConfig:
        """Load a config file; sections and keys left out keep their defaults."""
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})
