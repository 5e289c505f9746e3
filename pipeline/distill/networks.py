"""The networks of a distillation run: frozen teacher, trainable student, their heads.

The student side (backbone + DINO head + iBOT head, or + token projectors
in the head-free mode) is one module, so DDP wraps it whole and its EMA
copy is one ``deepcopy``. The teacher side never trains: its backbone is
frozen and its heads are fixed (loaded, or fitted by the first stage).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.distill.config import DistillConfig, HeadsConfig
from pipeline.distill.heads import DINOHead
from pipeline.models import build_model, normalise, weights_sha256


def init_seed(what: str, seed: int) -> int:
    """The seed that initialises ``what`` (a model name, or ``"heads"``) in a run of ``seed``: the same in
    every process and Python run, and different for teacher and student even when they share a seed.
    """
    digest = hashlib.blake2b(f"{what}\0{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def run_identity(config: DistillConfig) -> dict:
    """What makes a run's networks: teacher and student names, their initial seeds, the teacher's weights
    and heads files by checksum. Recorded in every checkpoint; a resume with any of it changed is refused.
    """
    models, heads = config.models, config.heads
    return {
        "teacher": models.teacher,
        "student": models.student,
        "teacher_init_seed": init_seed(models.teacher, config.train.seed),
        "student_init_seed": init_seed(models.student, config.train.seed),
        "teacher_weights_sha256": weights_sha256(models.teacher_weights) if models.teacher_weights else None,
        "teacher_heads_sha256": (
            weights_sha256(heads.teacher_heads_path) if heads.teacher_heads == "checkpoint" else None
        ),
    }


def seeded_model(
    name: str,
    seed: int,
    weights: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    layerscale: float | None = None,
) -> nn.Module:
    """``build_model(name, weights)`` with its random initialisation drawn from ``init_seed(name, seed)``,
    leaving the global random state as it was: a random teacher is the same network at every (re)start.

    ``layerscale`` replaces the LayerScale factors (``*.gamma``) of a model built without weights.
    """
    with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(init_seed(name, seed))
        model = build_model(name, weights, device=device, dynamic_img_size=True)
    if layerscale is not None and weights is None:
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if parameter_name.endswith(".gamma"):
                    parameter.fill_(layerscale)
    return model


def tokens(backbone: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class token ``[B, D]`` and patch tokens ``[B, N, D]`` (registers dropped) of uint8 NHWC ``images``."""
    features = backbone.forward_features(normalise(backbone, images))
    return features[:, 0], features[:, backbone.num_prefix_tokens :]


def make_heads(in_dim: int, config: HeadsConfig) -> nn.ModuleDict:
    """A DINO head (class tokens) and an iBOT head (patch tokens) onto the same prototypes."""
    return nn.ModuleDict(
        {
            "dino_head": DINOHead(
                in_dim, config.prototypes, config.hidden_dim, config.dino_bottleneck_dim, config.layers
            ),
            "ibot_head": DINOHead(
                in_dim, config.prototypes, config.hidden_dim, config.ibot_bottleneck_dim, config.layers
            ),
        }
    )


@dataclass
class Outputs:
    """What one side produced for a step: class tokens of global then local crops, and global patch tokens,
    each through the heads when there are heads (``dino`` ``[C*B, K]``, ``ibot`` ``[2B, N, K]``).
    """

    cls: torch.Tensor
    patches: torch.Tensor
    dino: torch.Tensor | None = None
    ibot: torch.Tensor | None = None


class StudentSide(nn.Module):
    """Backbone and heads (or projectors) that learn; ``train_backbone=False`` fits heads on a frozen backbone."""

    def __init__(self, backbone: nn.Module, heads: nn.ModuleDict, *, train_backbone: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.train_backbone = train_backbone
        backbone.requires_grad_(train_backbone)

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor) -> Outputs:
        """``global_crops`` ``[2B, S, S, 3]`` and ``local_crops`` ``[nB, s, s, 3]`` uint8 (the latter may be empty)."""
        with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
            cls, patches = tokens(self.backbone, global_crops)
            local_cls = tokens(self.backbone, local_crops)[0] if len(local_crops) else cls[:0]
        all_cls = torch.cat([cls, local_cls])
        if "dino_head" not in self.heads:
            return Outputs(all_cls, patches)
        return Outputs(all_cls, patches, self.heads["dino_head"](all_cls), self.heads["ibot_head"](patches))


class TeacherSide(nn.Module):
    """Frozen backbone with fixed heads (or none): evaluated without gradients.

    The backbone runs under the step's autocast; the heads run in float32 whatever the autocast, on
    float32 tokens: their logits become the targets (divided by a temperature of 0.04–0.07, then a
    softmax over up to 131,072 prototypes), where bfloat16's 8-bit mantissa moved the targets by a KL
    of 1–4e-4 against float32.
    """

    def __init__(self, backbone: nn.Module, heads: nn.ModuleDict | None) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.heads = heads.requires_grad_(False).eval() if heads is not None else None

    @torch.no_grad()
    def forward(self, global_crops: torch.Tensor) -> Outputs:
        cls, patches = tokens(self.backbone, global_crops)
        if self.heads is None:
            return Outputs(cls, patches)
        with torch.autocast(cls.device.type, enabled=False):
            dino, ibot = self.heads["dino_head"](cls.float()), self.heads["ibot_head"](patches.float())
        return Outputs(cls, patches, dino, ibot)
