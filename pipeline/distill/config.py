"""Every distillation setting in one typed, immutable config, loaded from YAML.

Defaults are the paper's Table 4 (H0-mini from H-Optimus-0) and, where the
paper is silent, DINOv2's ``ssl_default_config.yaml``: ``configs/distill/h0-mini.yaml``
spells them out; ``configs/distill/tiny-cpu.yaml`` shrinks everything to run
on two CPU cores in minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class MultiCropConfig(BaseModel):
    """Multi-crop settings: DINOv2's defaults, with the colour changes H&E tolerates.

    Sizes are pixels of the output crops (multiples of the student's 14-px
    patch); scales are shares of the tile's area. Hue stays small (±0.05 of
    the colour circle, ±18°): a larger shift turns eosin pink into colours
    no stain produces and makes the student invariant to what separates
    haematoxylin from eosin. Solarisation is off by default for the same
    reason (it inverts the bright, eosin and background, pixels); DINOv2 used
    ``global_solarize_p = (0.0, 0.2)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    global_crop_size: int = Field(224, gt=0)
    global_crops_scale: tuple[float, float] = (0.32, 1.0)
    local_crops_number: int = Field(8, ge=0)
    local_crop_size: int = Field(98, gt=0)
    local_crops_scale: tuple[float, float] = (0.05, 0.32)
    crops_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="range of crop width / height")
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    hflip_p: Probability = 0.5
    vflip_p: Probability = 0.5
    rot90_p: Probability = Field(0.5, description="rotation by k × 90°, k uniform in 1..3, when applied")
    color_jitter_p: Probability = 0.8
    brightness: float = Field(0.4, ge=0, description="factor drawn in [1 - b, 1 + b]")
    contrast: float = Field(0.4, ge=0, description="factor drawn in [1 - c, 1 + c]")
    saturation: float = Field(0.2, ge=0, description="factor drawn in [1 - s, 1 + s]")
    hue: float = Field(0.05, ge=0, le=0.5, description="shift drawn in [-h, h], in turns of the colour circle")
    grayscale_p: Probability = 0.2
    global_blur_p: tuple[Probability, Probability] = (1.0, 0.1)
    local_blur_p: Probability = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_px: int = Field(9, gt=0)
    global_solarize_p: tuple[Probability, Probability] = (0.0, 0.0)
    solarize_threshold: int = Field(128, ge=0, le=255)

    @model_validator(mode="after")
    def _check_ranges(self) -> MultiCropConfig:
        for name in ("global_crops_scale", "local_crops_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(low, high)}")
        for name in ("crops_ratio", "blur_sigma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got {(low, high)}")
        if self.blur_kernel_px % 2 == 0:
            raise ValueError(f"blur_kernel_px must be odd, got {self.blur_kernel_px}")
        return self


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelsConfig(_Frozen):
    teacher: str = Field("h-optimus-0", description="model name (pipeline.models.build_model)")
    teacher_weights: str | None = Field(None, description="local weights file of the teacher backbone")
    student: str = Field("h0-mini", description="model name of the student (randomly initialised)")
    random_teacher_layerscale: float | None = Field(
        None,
        gt=0,
        description="LayerScale factors of a teacher built without weights: a fresh ViT's 1e-5 makes "
        "its blocks near no-ops and every tile's class token alike, leaving nothing to distil (tiny configs: 1)",
    )


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
    clip_grad: float = Field(
        3.0,
        gt=0,
        description="gradient norm bound of each trained module on its own "
        "(backbone, DINO head, iBOT head), as DINOv2 clips them",
    )
    layerwise_decay: float = Field(
        0.9,
        gt=0,
        le=1,
        description="block i of L learns at decay ** (L - i) times the LR; "
        "embeddings at decay ** (L + 1) (DINOv2's layerwise_decay)",
    )
    patch_embed_lr_mult: float = Field(0.2, gt=0, description="further LR multiplier of the patch embedding (DINOv2)")
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
    window_tiles: int = Field(
        8192,
        gt=0,
        description="tiles shuffled together, from window_tiles / piece_tiles "
        "pieces of as many slides; bounds each loader worker's memory (~27 kB a tile)",
    )
    agreement_tiles: int = Field(
        256,
        ge=0,
        description="about this many tiles (on average at most) held out of training, every M-th tile of "
        "each slide (pipeline.distill.held_out), on which "
        "the end of a run measures teacher-student agreement (k-NN overlap, linear CKA) before and after; "
        "0: none held out, not measured",
    )
    agreement_split: int = Field(
        0,
        ge=0,
        description="which of the M disjoint held-out sets (every M-th tile of each slide, at offset "
        "hash(store, slide) + agreement_split); another value holds out other tiles",
    )
    agreement_neighbours: int = Field(10, gt=0, description="k of the k-NN overlap")


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
        """Load a config file; sections and keys left out keep their defaults.

        Raises
        ------
        ConfigError
            When the file is not YAML or its values are not a valid config, in one line naming the file.
        """
        try:
            return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or type(error).__name__
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ConfigError(f"{path}: not a valid distillation config: {problems}") from None


def recorded_text(config: DistillConfig) -> str:
    """The config as a run directory records it (``RUN/config.yaml``): a resumed run must give the same text."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True)


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate."""


def random_teacher_warning(config: DistillConfig) -> str | None:
    """A loud message when a real (non-``tiny-``) teacher has no weights, ``None`` otherwise.

    Distilling a randomly initialised H-optimus-0 runs for days and teaches the student nothing; only the
    tiny test teachers are meant to run random (then seeded by name and seed, so runs reproduce).
    """
    models = config.models
    if models.teacher_weights is not None or models.teacher.startswith("tiny-"):
        return None
    return (
        f"DISTILLING FROM A RANDOM TEACHER: models.teacher_weights is not set, so {models.teacher!r} is a "
        "randomly initialised network and the student will learn nothing useful; set models.teacher_weights "
        "to the teacher's local weights file"
    )
