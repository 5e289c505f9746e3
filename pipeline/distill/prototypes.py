"""Held-out prototype agreement: whether the student picks the teacher's prototype for tiles it never trained on.

The k-NN overlap and linear CKA (:mod:`pipeline.distill.agreement`) read the backbone's embedding geometry,
which random ViTs largely share on H&E tiles, so they rise towards any random teacher alike. This figure is
read from what the loss trains, the DINO and iBOT heads, and is teacher-specific by construction: prototype
numbers mean nothing outside the teacher's heads, so a student agrees on them above chance only by learning
them from its teacher. It is an accuracy on held-out tiles, not the loss value: it shows whether what is
distilled generalises.

For each held-out tile (whole, resized to the global-crop size, no augmentation) the teacher's head logits are
centred with the run's centre, as its training targets are (the temperature does not move an argmax), and the
tile agrees when the student's argmax prototype equals the teacher's; the iBOT head does the same for every
patch token. ``chance`` is ``Σ_k f_T(k) f_S(k)`` over the shares of samples whose teacher / student argmax is
``k``: what two independent draws with these marginals agree on. A student that only learns which prototypes
the teacher favours, not which tile gets which, reaches chance and no more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.distill.config import DistillConfig
from pipeline.distill.networks import init_seed, make_heads, tokens


@dataclass
class DistilledHeads:
    """What the prototype agreement reads besides the backbones: the teacher's fixed heads, the student's
    (the EMA's, for the exported student) and the teacher centres the run ended with (``[K]``, any shape).
    """

    teacher: nn.ModuleDict
    student: nn.ModuleDict
    dino_center: torch.Tensor
    ibot_center: torch.Tensor


def initial_heads(config: DistillConfig, in_dim: int, device: torch.device | str = "cpu") -> nn.ModuleDict:
    """The heads the distillation stage of a run with ``config.train.seed`` starts from, drawn as it draws them
    (:class:`pipeline.distill.train.Stage`), leaving the global random state as it was.
    """
    with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(init_seed("distill-heads", config.train.seed))
        return make_heads(in_dim, config.heads).to(device)


@torch.no_grad()
def head_logits(
    backbone: nn.Module, heads: nn.ModuleDict, tiles: torch.Tensor, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO logits of the class tokens ``[n, K]`` and iBOT logits of every patch token ``[n·N, K]`` (float32,
    CPU) of uint8 ``tiles`` ``[n, H, W, 3]``, in eval mode and without autocast.
    """
    modules = (backbone, heads)
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    dino, ibot = [], []
    device = next(backbone.parameters()).device
    try:
        with torch.autocast(device.type, enabled=False):
            for i in range(0, len(tiles), batch):
                cls, patches = tokens(backbone, tiles[i : i + batch].to(device))
                dino.append(heads["dino_head"](cls.float()).float().cpu())
                ibot.append(heads["ibot_head"](patches.float()).float().flatten(0, 1).cpu())
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
    return torch.cat(dino), torch.cat(ibot)


def prototype_agreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor, center: torch.Tensor) -> dict:
    """``agreement`` (share of rows whose argmaxes match), ``chance`` (``Σ_k f_T(k) f_S(k)``) and
    ``teacher_prototypes`` (distinct teacher argmaxes) of logits ``[M, K]``, the teacher's centred first.
    """
    if teacher_logits.shape != student_logits.shape or len(teacher_logits) == 0:
        raise ValueError(f"need logits of one shape [M > 0, K], got {teacher_logits.shape} and {student_logits.shape}")
    prototypes = teacher_logits.shape[1]
    teacher = (teacher_logits.float() - center.float().reshape(1, -1).to(teacher_logits.device)).argmax(dim=1)
    student = student_logits.argmax(dim=1)
    shares = [torch.bincount(a, minlength=prototypes).double() / len(a) for a in (teacher, student)]
    return {
        "agreement": float((teacher == student).double().mean()),
        "chance": float((shares[0] * shares[1]).sum()),
        "teacher_prototypes": int(teacher.unique().numel()),
    }


def measure_prototypes(
    tiles: torch.Tensor,
    teacher: nn.Module,
    teacher_heads: nn.ModuleDict,
    centers: dict[str, torch.Tensor],
    students: dict[str, tuple[nn.Module, nn.ModuleDict]],
) -> dict[str, float | int]:
    """``{dino,ibot}_prototype_{agreement,chance}_<when>`` for each ``when → (backbone, heads)`` of ``students``,
    and ``{dino,ibot}_teacher_prototypes``, rounded to 4 decimals; ``centers`` holds the teacher's ``"dino"``
    and ``"ibot"`` centres. Every process must call it (networks may be sharded).
    """
    references = dict(zip(("dino", "ibot"), head_logits(teacher, teacher_heads, tiles)))
    figures: dict[str, float | int] = {}
    for when, (backbone, student_heads) in students.items():
        for name, student_logits in zip(("dino", "ibot"), head_logits(backbone, student_heads, tiles)):
            result = prototype_agreement(references[name], student_logits, centers[name])
            figures[f"{name}_prototype_agreement_{when}"] = round(result["agreement"], 4)
            figures[f"{name}_prototype_chance_{when}"] = round(result["chance"], 4)
            figures[f"{name}_teacher_prototypes"] = result["teacher_prototypes"]
    return figures
