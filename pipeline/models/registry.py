"""Models built by name: the H-optimus-0 teacher, the H0-mini student, tiny test twins, any timm name.

Every model is a timm ``VisionTransformer`` (or any timm model for a plain timm name) with random
weights; ``weights`` loads a local file over them. Each model carries the mean/std its inputs must be
normalised with in ``model.pretrained_cfg`` so the normalisation can never drift from the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import SwiGLUPacked
from torch import nn

from pipeline.models.weights import load_weights

RGB = tuple[float, float, float]

# H-optimus-0's released pretrained_cfg (huggingface.co/bioptimus/H-optimus-0, config.json); H0-mini was
# distilled from it on the same tiles and ships the same values.
HOPTIMUS_MEAN: RGB = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD: RGB = (0.211883, 0.230117, 0.177517)


def swiglu_mlp_ratio(embed_dim: int, mlp_ratio: float = 4.0) -> float:
    """Timm ``mlp_ratio`` that gives a ``SwiGLUPacked`` MLP the width of DINOv2's ``SwiGLUFFNFused``.

    DINOv2 (``dinov2/layers/swiglu_ffn.py``) shrinks the ``mlp_ratio * D`` hidden width to 2/3, rounded
    up to a multiple of 8, so SwiGLU's three matrices cost what the GELU MLP's two did. timm's
    ``SwiGLUPacked`` packs gate and value into one ``fc1`` of ``int(D * mlp_ratio)`` outputs, so its
    ratio is twice that width over ``D`` (timm's own ``vit_giant_patch14_reg4_dinov2`` uses
    ``2.66667 * 2`` for the same reason). Half a unit is added so timm's ``int()`` lands on the width
    exactly instead of one below it through float rounding.
    """
    hidden = (int(int(embed_dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8
    return (2 * hidden + 0.5) / embed_dim


@dataclass(frozen=True)
class ViTSpec:
    """A DINOv2-style ViT/14 with 4 registers, LayerScale and a SwiGLU MLP, at 224 px.

    ``architecture`` is the timm entry point the spec is built through; every architecture choice is
    passed explicitly, so its defaults only matter for the ``pretrained_cfg`` fields we do not set.
    """

    architecture: str
    embed_dim: int
    depth: int
    num_heads: int
    mean: RGB = HOPTIMUS_MEAN
    std: RGB = HOPTIMUS_STD
    img_size: int = 224
    patch_size: int = 14
    reg_tokens: int = 4
    init_values: float = 1e-5

    def timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model(self.architecture, ...)``."""
        return dict(
            img_size=self.img_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=swiglu_mlp_ratio(self.embed_dim),
            mlp_layer=SwiGLUPacked,
            act_layer=nn.SiLU,
            init_values=self.init_values,
            reg_tokens=self.reg_tokens,
            no_embed_class=True,  # DINOv2 registers: neither class nor register tokens get a position
            dynamic_img_size=False,
            num_classes=0,
            pretrained_cfg_overlay=dict(
                mean=self.mean,
                std=self.std,
                input_size=(3, self.img_size, self.img_size),
                num_classes=0,
            ),
        )


MODEL_SPECS: dict[str, ViTSpec] = {
    # ViT-g/14: 1536 wide, 40 blocks, 24 heads, SwiGLU 4096 (fc1 8192 packed), ~1.13B parameters.
    "h-optimus-0": ViTSpec("vit_giant_patch14_reg4_dinov2", embed_dim=1536, depth=40, num_heads=24),
    # ViT-B/14 with the paper's Table 4 (MLP ratio 4, SwiGLU) read the DINOv2 way: SwiGLU 2048
    # (fc1 4096 packed), 85.7M parameters = the paper's 86M, as owkin/plism-benchmark builds it
    # (vit_base_patch14_reg4_dinov2, mlp_ratio=4, mlp_layer=SwiGLUFFNFused). timm's SwiGLUPacked at a
    # plain ratio of 4 would give SwiGLU 1536 and 71.6M parameters instead.
    "h0-mini": ViTSpec("vit_base_patch14_reg4_dinov2", embed_dim=768, depth=12, num_heads=12),
    # Same families, small enough for CPU tests; the widths differ so distillation must project.
    "tiny-teacher": ViTSpec("vit_small_patch14_reg4_dinov2", embed_dim=96, depth=3, num_heads=4),
    "tiny-student": ViTSpec("vit_small_patch14_reg4_dinov2", embed_dim=48, depth=2, num_heads=2),
}


def build_model(
    name: str,
    weights: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dynamic_img_size: bool = False,
    init_seed: int | None = None,
) -> nn.Module:
    """Build a model by name, with random weights unless a local ``weights`` file is given.

    ``name`` is a key of ``MODEL_SPECS`` or a timm registry name (built with ``num_classes=0``).
    ``device="meta"`` builds without memory, to inspect shapes and parameter counts of full-size
    models. Hub names (``hf-hub:...``) are refused: nothing is ever downloaded.
    ``dynamic_img_size`` lets the model take other input sizes than 224 px (the position embeddings
    are resampled), as multi-crop training needs for its local crops; the parameters are the same.
    ``init_seed`` makes the random weights a function of ``(name, init_seed)`` alone, the same on
    every device and in every process (drawn on the CPU, from a generator of their own, leaving the
    caller's random state untouched); without it they come from torch's global generator.
    """
    device = torch.device(device)
    if weights is not None and device.type == "meta":
        raise ValueError(f"cannot load {weights} onto the meta device: meta tensors hold no values")
    if init_seed is not None and weights is None and device.type != "meta":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeded_initialisation(name, init_seed))
            return _create(name, dynamic_img_size).to(device)
    with device:  # parameters are created where they will live; no CPU detour for a GPU build
        model = _create(name, dynamic_img_size)
    if weights is not None:
        load_weights(model, weights)
    return model


def seeded_initialisation(name: str, init_seed: int) -> int:
    """The torch seed of model ``name``'s random weights for ``init_seed``: differs by name as well as by seed."""
    digest = hashlib.sha256(f"{name}:{init_seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _create(name: str, dynamic_img_size: bool) -> nn.Module:
    """The randomly initialised model for ``name``."""
    spec = MODEL_SPECS.get(name)
    if spec is not None:
        kwargs = {**spec.timm_kwargs(), "dynamic_img_size": dynamic_img_size}
        return timm.create_model(spec.architecture, pretrained=False, **kwargs)
    if not timm.is_model(name):
        raise ValueError(
            f"unknown model {name!r}: not one of {sorted(MODEL_SPECS)} nor a timm registry name "
            "(hub names are not accepted; pass a local weights file instead)"
        )
    return timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=dynamic_img_size)
