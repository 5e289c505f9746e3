"""Weights from a local file only: safetensors or a torch checkpoint, timm- or DINOv2-named.

Loading is strict: a file that leaves a parameter at its random value, or carries one the model does
not have, raises ``WeightsError`` rather than giving embeddings from a half-loaded model.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import VisionTransformer, clean_state_dict
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from storage.checksum import sha256_of_file

StateDict = dict[str, torch.Tensor]

# Checkpoints nest the weights: DINOv2's teacher_checkpoint.pth under "teacher", trainers under
# "model" or "state_dict". Outer keys are tried in this order.
_WRAPPER_KEYS = ("teacher", "model", "state_dict")
# DINOv2 keeps the ViT under "backbone." next to its DINO/iBOT heads (a full training checkpoint
# holds "student.backbone." and "teacher.backbone."; the teacher is the one DINOv2 evaluates).
_BACKBONE_PREFIXES = ("teacher.backbone.", "backbone.")
# DINOv2 trained with block_chunks > 0 names block i of chunk c "blocks.c.i."; timm counts blocks flat.
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
_SHOWN_KEYS = 5
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


class WeightsError(ValueError):
    """A weights file that cannot be read, or does not fit the model it is loaded into."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


def weights_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a weights file, for the provenance record of every store it produces."""
    return sha256_of_file(path)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``model`` in place; every key and shape must match after conversion.

    A DINOv2-format file (recognised, as timm does, by its ``mask_token``) is mapped to timm names with
    timm's own ``checkpoint_filter_fn``, which also resamples DINOv2's 518 px position grid to the
    model's. Anything else must already be in the model's own names and shapes.
    """
    path = Path(path)
    state = read_state_dict(path)
    if "mask_token" in state:
        state = _from_dinov2(state, model, path)
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=True)


def read_state_dict(path: str | Path) -> StateDict:
    """The flat ``name -> tensor`` dict in ``path``, unwrapped and stripped of wrapper prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            checkpoint = load_file(path, device="cpu")
        else:  # weights_only: a checkpoint is data, never code to run
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the first global it would have had to import (e.g. builtins.exec): loading the file
        # the old way would run that code as the user, so the file is refused, never "trusted".
        culprit = _UNSAFE_GLOBAL.search(str(error))
        problem = (
            "refused: the checkpoint holds Python objects besides tensors"
            + (f" ({culprit.group(1)})" if culprit else "")
            + ", which could run code when loaded; give a safetensors file or a plain tensor state dict"
        )
        raise WeightsError(path, problem) from error
    except (SafetensorError, RuntimeError, EOFError) as error:
        problem = f"not a readable safetensors file or plain-tensor torch checkpoint ({error})"
        raise WeightsError(path, problem) from error
    return _strip_prefixes(_unwrap(checkpoint, path))


def _unwrap(checkpoint: object, path: Path) -> StateDict:
    """Descend through wrapper dicts until one holds only tensors."""
    while isinstance(checkpoint, dict) and not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        key = next((k for k in _WRAPPER_KEYS if k in checkpoint), None)
        if key is None:
            raise WeightsError(path, f"no state dict found among keys {_few(checkpoint)}")
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise WeightsError(path, f"holds a {type(checkpoint).__name__}, not a state dict")
    return checkpoint


def _strip_prefixes(state: StateDict) -> StateDict:
    """Drop DDP/compile prefixes (timm's ``clean_state_dict``), then keep only the ViT backbone."""
    state = clean_state_dict(state)
    for prefix in _BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return state


def _from_dinov2(state: StateDict, model: nn.Module, path: Path) -> StateDict:
    """DINOv2 names and token layout -> timm's, by timm's conversion after un-chunking the blocks."""
    if not isinstance(model, VisionTransformer):
        raise WeightsError(path, f"DINOv2-format weights need a timm VisionTransformer, not {type(model).__name__}")
    state = {_CHUNKED_BLOCK.sub(r"blocks.\1.", k): v for k, v in state.items()}
    return checkpoint_filter_fn(state, model)


def _check_fits(model: nn.Module, state: StateDict, path: Path) -> None:
    """Raise ``WeightsError`` naming missing, unexpected and wrongly shaped keys, if there are any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = [
        f"{len(keys)} {what}: {_few(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", mismatched))
        if keys
    ]
    if problems:
        raise WeightsError(path, f"weights do not fit {type(model).__name__}: " + "; ".join(problems))


def _few(keys: object) -> str:
    """The first few of ``keys``, comma-separated, with a count of the rest."""
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:_SHOWN_KEYS])
    return shown + (f", ... (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")
