"""How a run's networks spread over processes, and how their state becomes one checkpoint file.

``ddp`` keeps a whole copy of every network in each process and averages the
gradients: the right choice while the teacher fits on one GPU beside the
student. ``fsdp`` (PyTorch's ``fully_shard``) splits the parameters of every
transformer block, of the rest of each backbone and of each head across the
processes and gathers a block's parameters only while it computes; a
ViT-g/14 teacher (1.1 B parameters, 4.5 GB in float32) then costs a 1/N share
per GPU, and so does the student's AdamW state and EMA. Gradients are
reduce-scattered and averaged, so both compute what one process with the
same global batch would.

Either way checkpoints are single files with whole tensors under the
networks' own parameter names (the optimizer state keyed by those names too),
so a run saved under one layout resumes under the other, or in one process.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.nn.parallel import DistributedDataParallel

Sharding = Literal["ddp", "fsdp"]
SHARDINGS: tuple[Sharding, ...] = ("ddp", "fsdp")

_WHOLE = StateDictOptions(full_state_dict=True)
# Gathered onto rank 0's CPU only: what a checkpoint writer needs, without a full copy on every GPU.
_WHOLE_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_mesh(sharding: Sharding, device: torch.device) -> DeviceMesh | None:
    """The mesh to shard over (every process), or ``None`` when networks are replicated or there is one process."""
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {SHARDINGS}, not {sharding!r}")
    if sharding == "ddp" or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard(module: nn.Module, mesh: DeviceMesh) -> None:
    """Shard each transformer block of ``module`` as its own unit, then the rest of it; no-op if done already.

    One unit per block keeps a single block's parameters gathered at a time,
    which is what bounds the memory of a sharded forward and backward. Every
    unit, the outermost included, frees its gathered parameters after its
    forward: left to itself FSDP keeps the outermost unit's gathered for the
    backward, and a module that has no backward (the teacher, the EMA) would
    then compute its next step with parameters gathered before the update.
    """
    if isinstance(module, FSDPModule):
        return
    for block in getattr(module, "blocks", ()):
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(module, mesh=mesh, reshard_after_forward=True)
    if hasattr(module, "forward_features"):  # what the distillation calls on a backbone, instead of forward
        register_fsdp_forward_method(module, "forward_features")


def shard_each(modules: nn.ModuleDict | None, mesh: DeviceMesh | None) -> None:
    """Shard every module of ``modules`` (heads, projectors) on its own, when there is a mesh."""
    if modules is not None and mesh is not None:
        for module in modules.values():
            shard(module, mesh)


def distributed_wrapper(module: nn.Module, mesh: DeviceMesh | None) -> nn.Module:
    """What the training step calls: the module itself (one process, or sharded), or its DDP wrapper."""
    if mesh is None and dist.is_initialized():
        return DistributedDataParallel(module)
    return module


def whole_state(module: nn.Module, *, on_every_rank: bool = False) -> dict[str, torch.Tensor]:
    """``module``'s state with whole tensors, gathered from shards if sharded.

    A collective when sharded: every process must call it. By default only
    rank 0 receives the tensors (on its CPU), the others an empty dict;
    ``on_every_rank`` gives every process the whole state on its device.
    """
    return get_model_state_dict(module, options=_WHOLE if on_every_rank else _WHOLE_ON_RANK0)


def load_whole_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state (every process passes all of it) into ``module``, sharded or not."""
    set_model_state_dict(module, state, options=_WHOLE)


def whole_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by ``model``'s parameter names, whole tensors on rank 0 (a collective)."""
    return get_optimizer_state_dict(model, optimizer, options=_WHOLE_ON_RANK0)


def load_whole_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=_WHOLE)
