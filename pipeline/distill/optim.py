"""DINOv2's optimiser rules: parameter groups (layer-wise LR decay, patch-embedding LR, weight-decay
exemptions, prototype layers) and gradient clipping per module.

Transcribed in behaviour from DINOv2 (``dinov2/train/param_groups.py``: ``get_vit_lr_decay_rate``,
``get_params_groups_with_decay``, ``fuse_params_groups``; ``dinov2/train/ssl_meta_arch.py``:
``get_params_groups``; ``dinov2/train/train.py``: ``apply_optim_scheduler`` and the clipping loop):

- The student's modules (backbone, DINO head, iBOT head; or the regression projectors) each get their
  groups of their own, and each is clipped to ``clip_grad`` on its own: one module's large gradient
  does not shrink another's step, as one joint norm over all of them would.
- Learning-rate multiplier of a backbone parameter: ``decay ** (L + 1 − layer)`` with ``L`` blocks,
  layer 0 for the patch embedding, position embedding and the class / register / mask tokens, layer
  ``i + 1`` for block ``i`` and layer ``L + 1`` (multiplier 1) for the rest (the final norm). The patch
  embedding's is further multiplied by ``patch_embed_lr_mult``. Heads have no blocks: multiplier 1.
- No weight decay on biases, norms and LayerScale factors (``.bias``, ``norm``, ``gamma`` in the
  name). DINOv2 does decay the class and register tokens, the position embedding and the heads'
  prototype magnitudes ``g``, and so does this module.
- The prototype layers (``last_layer``) take the prototype learning rate, which is 0 during the first
  ``freeze_prototypes_epochs``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from pipeline.distill.config import OptimConfig

# Backbone parameters DINOv2 puts at layer 0 (timm names the register tokens "reg_token").
_EMBEDDING_PARTS = ("pos_embed", "patch_embed", "cls_token", "reg_token", "register_tokens", "mask_token")


def lr_multiplier(name: str, n_blocks: int, layerwise_decay: float, patch_embed_lr_mult: float) -> float:
    """Learning-rate multiplier of the parameter ``name`` in a module of ``n_blocks`` blocks (0: a head)."""
    layer = n_blocks + 1
    if n_blocks:
        if any(part in name for part in _EMBEDDING_PARTS):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
    multiplier = layerwise_decay ** (n_blocks + 1 - layer)
    return multiplier * patch_embed_lr_mult if "patch_embed" in name else multiplier


def weight_decay_multiplier(name: str) -> float:
    """0 for biases, norms and LayerScale factors, 1 for everything else (DINOv2's rule)."""
    return 0.0 if name.endswith(".bias") or "norm" in name or "gamma" in name else 1.0


def trained_modules(student: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The student's modules that are grouped and clipped apart: its backbone when it trains, then each head."""
    if student.train_backbone:
        yield "backbone", student.backbone
    yield from student.heads.items()


def param_groups(student: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups of a :class:`~pipeline.distill.networks.StudentSide`: one per distinct
    ``(module, lr_multiplier, wd_multiplier, prototypes)``, each carrying those keys and ``names``.
    """
    groups: dict[tuple, dict] = {}
    for module_name, module in trained_modules(student):
        n_blocks = len(getattr(module, "blocks", ()))
        for name, parameter in module.named_parameters():
            if not parameter.requires_grad:
                continue
            key = (
                module_name,
                lr_multiplier(name, n_blocks, optim.layerwise_decay, optim.patch_embed_lr_mult),
                weight_decay_multiplier(name),
                "last_layer" in name,
            )
            group = groups.setdefault(
                key,
                {
                    "params": [],
                    "names": [],
                    "module": key[0],
                    "lr_multiplier": key[1],
                    "wd_multiplier": key[2],
                    "prototypes": key[3],
                },
            )
            group["params"].append(parameter)
            group["names"].append(f"{module_name}.{name}")
    return list(groups.values())


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float, prototype_lr: float, weight_decay: float) -> None:
    """Each group's LR and weight decay for a step from the scheduled values (DINOv2's ``apply_optim_scheduler``)."""
    for group in optimizer.param_groups:
        group["lr"] = (prototype_lr if group["prototypes"] else lr) * group["lr_multiplier"]
        group["weight_decay"] = weight_decay * group["wd_multiplier"]


def clip_per_module(student: nn.Module, max_norm: float) -> dict[str, torch.Tensor]:
    """Clip the gradient of each trained module to ``max_norm`` on its own; returns each one's norm before.

    Sharded (FSDP) parameters are DTensors: ``clip_grad_norm_`` then reduces each module's norm over its
    shards, so every process clips by the norm of the whole module, as DINOv2's FSDP modules do.
    """
    norms = {}
    for name, module in trained_modules(student):
        parameters = [p for p in module.parameters() if p.grad is not None]
        if parameters:
            norm = nn.utils.clip_grad_norm_(parameters, max_norm)
            norms[name] = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return norms
