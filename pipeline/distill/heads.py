"""DINOv2's projection head: MLP, bottleneck, L2 normalisation, weight-normalised prototypes.

Matches ``dinov2/layers/dino_head.py`` (no batch norm, MLP biases on): the MLP's linear layers are drawn
from a normal of std 0.02 (``torch.nn.init.trunc_normal_``, cut at ±2, i.e. not cut in practice) with zero
biases; the prototype layer keeps ``nn.Linear``'s default draw for its direction ``v`` and has its
magnitude ``g`` set to 1. DINOv2 leaves ``g`` trainable (DINO and iBOT froze it with
``norm_last_layer=True``; DINOv2 dropped that): its optimiser zeroes the last layer's learning rate for
the first ``freeze_last_layer_epochs`` and applies weight decay to ``g``.

Weight norm uses ``torch.nn.utils.parametrizations.weight_norm`` (the deprecated hook version cannot be
deep-copied after a forward pass, which the EMA copy needs), so the state-dict keys are
``last_layer.parametrizations.weight.original0`` (``g``, ``[K, 1]``) and ``...original1`` (``v``,
``[K, bottleneck_dim]``). Checkpoints written by DINOv2 name them ``last_layer.weight_g`` /
``last_layer.weight_v``; loading renames them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

# DINOv2 checkpoint key (hook-based weight norm) -> key of the parametrised layer.
_LEGACY_KEYS = {
    "last_layer.weight_g": "last_layer.parametrizations.weight.original0",
    "last_layer.weight_v": "last_layer.parametrizations.weight.original1",
}


def _mlp(in_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int) -> nn.Module:
    """``nlayers`` linear layers with GELU between them, ending at ``bottleneck_dim``."""
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
    for _ in range(nlayers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, bottleneck_dim))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """Maps tokens ``[..., in_dim]`` to prototype scores ``[..., out_dim]`` (logits, before any temperature).

    Each score is ``g_k * <v_k / |v_k|, z / |z|>`` with ``z`` the MLP output, so with ``g = 1`` it is a
    cosine similarity in ``[-1, 1]``.
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead needs at least one layer, got nlayers={nlayers}")
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, nlayers)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.register_load_state_dict_pre_hook(_rename_legacy_weight_norm)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DINOv2's initialisation; call it again after ``to_empty`` when the head was built on ``meta``."""
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        weight = self.last_layer.parametrizations.weight
        nn.init.kaiming_uniform_(weight.original1, a=math.sqrt(5))  # nn.Linear's default, as DINOv2 keeps it
        weight.original0.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        # DINOv2's eps: 1e-12 underflows in float16 (bfloat16 has float32's range).
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return self.last_layer(nn.functional.normalize(x, dim=-1, p=2, eps=eps))


def _rename_legacy_weight_norm(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook: accept DINOv2's ``weight_g`` / ``weight_v`` keys for the prototypes."""
    for legacy, current in _LEGACY_KEYS.items():
        if prefix + legacy in state_dict:
            state_dict[prefix + current] = state_dict.pop(prefix + legacy)
