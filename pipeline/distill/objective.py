"""The loss of one step from the student's and the teacher's outputs, as DINOv2's ``ssl_meta_arch.py`` adds
it up: DINO on class tokens plus iBOT on patch tokens through the heads, or token regression without heads.

It holds the teacher centres, so a checkpoint saves them with it.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.distill.config import DistillConfig
from pipeline.distill.losses import DINOLoss, IBOTPatchLoss
from pipeline.distill.networks import Outputs


class Objective(nn.Module):
    """The loss of a step from the student's and the teacher's outputs; holds the teacher centres."""

    def __init__(self, config: DistillConfig, student_dim: int, teacher_dim: int, with_heads: bool) -> None:
        super().__init__()
        loss = config.loss
        self.with_heads = with_heads
        self.dino_weight, self.ibot_weight = loss.dino_weight, loss.ibot_weight
        if with_heads:
            common = {
                "student_temp": loss.student_temp,
                "center_momentum": loss.center_momentum,
                "centering": loss.centering,
            }
            self.dino = DINOLoss(config.heads.prototypes, **common)
            self.ibot = IBOTPatchLoss(config.heads.prototypes, **common)

    def forward(
        self, student: Outputs, teacher: Outputs, teacher_temp: float, regression: nn.Module | None
    ) -> dict[str, torch.Tensor]:
        if not self.with_heads:
            n_global = len(teacher.cls)
            value = regression(student.cls[:n_global], student.patches, teacher.cls, teacher.patches)
            return {"loss": value, "regression_loss": value.detach()}
        batch = len(teacher.dino) // 2
        # float32 once: at 131,072 prototypes a bf16 -> fp32 copy of the iBOT logits is gigabytes.
        dino_logits, ibot_logits = teacher.dino.float(), teacher.ibot.float()
        teacher_dino = self.dino.teacher_probabilities(dino_logits, teacher_temp)
        teacher_ibot = self.ibot.teacher_probabilities(ibot_logits, teacher_temp)
        dino = self.dino(list(student.dino.float().split(batch)), list(teacher_dino.split(batch)))
        ibot = self.ibot(student.ibot.float(), teacher_ibot)
        self.dino.update_center(dino_logits)
        self.ibot.update_center(ibot_logits)
        return {
            "loss": self.dino_weight * dino + self.ibot_weight * ibot,
            "dino_loss": dino.detach(),
            "ibot_loss": ibot.detach(),
        }
