"""Tiles in, one embedding per tile out: normalisation and token pooling, kept with the model.

Contract: images are uint8 RGB ``[B, H, W, 3]`` (NHWC), exactly as the tile stores hold them, at the
model's input size (224 px for our ViTs). Normalisation happens here, with the mean/std the model
carries in ``model.pretrained_cfg``, so a caller can never pair a model with another model's statistics.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

Pooling = Literal["cls", "cls+mean"]


def normalise(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``[B, H, W, 3]`` -> float32 ``[B, 3, H, W]`` in ``model``'s normalisation.

    Computed in float32 on the images' own device, so a batch moved to the GPU as uint8 (4x fewer
    bytes than float32) is normalised there.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    mean = torch.tensor(model.pretrained_cfg["mean"], dtype=torch.float32, device=images.device)
    std = torch.tensor(model.pretrained_cfg["std"], dtype=torch.float32, device=images.device)
    pixels = images.to(torch.float32).div_(255.0)
    return pixels.sub_(mean).div_(std).permute(0, 3, 1, 2)


def embed(model: nn.Module, images: torch.Tensor, pooling: Pooling = "cls+mean") -> torch.Tensor:
    """Embeddings ``[B, embedding_dim(model, pooling)]`` of uint8 RGB tiles ``[B, H, W, 3]``.

    The images are moved to the model's device and, once normalised, cast to its dtype. Model mode and
    gradient tracking are the caller's: wrap in ``torch.inference_mode()`` and call ``model.eval()``
    for extraction.
    """
    parameter = next(model.parameters())
    pixels = normalise(model, images.to(parameter.device)).to(parameter.dtype)
    return pool_tokens(model, model.forward_features(pixels), pooling)


def pool_tokens(model: nn.Module, tokens: torch.Tensor, pooling: Pooling = "cls+mean") -> torch.Tensor:
    """Pool timm ``forward_features`` tokens ``[B, prefix + N, D]`` into ``[B, D]`` or ``[B, 2D]``.

    ``"cls"`` is the class token; ``"cls+mean"`` appends the mean of the N patch tokens, the embedding
    the H0-mini paper evaluates (Sec. 3.2). Register tokens sit between the class token and the patch
    tokens (timm's ``num_prefix_tokens`` counts both) and are never pooled: they hold global scratch
    state, not image content.
    """
    if pooling not in get_args(Pooling):
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {get_args(Pooling)}")
    if tokens.ndim != 3 or not getattr(model, "has_class_token", False):
        raise ValueError(f"{type(model).__name__} does not give class-token ViT features (got {tuple(tokens.shape)})")
    cls_token = tokens[:, 0]
    if pooling == "cls":
        return cls_token
    return torch.cat([cls_token, tokens[:, model.num_prefix_tokens :].mean(dim=1)], dim=-1)


def embedding_dim(model: nn.Module, pooling: Pooling = "cls+mean") -> int:
    """Width of ``embed(model, ..., pooling)``: 1536 for H0-mini with ``"cls+mean"``."""
    if pooling not in get_args(Pooling):
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {get_args(Pooling)}")
    return model.num_features * (2 if pooling == "cls+mean" else 1)
