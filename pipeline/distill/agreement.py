"""How far the student's embedding space agrees with the teacher's, by figures that do not come from the loss.

- ``knn_overlap``: for every tile, the share of its ``k`` nearest neighbours (cosine, among the other
  evaluation tiles) that the teacher's and the student's embeddings have in common, averaged over
  the tiles. 1 means both spaces rank neighbours alike; two unrelated spaces give about
  ``k / (n − 1)``. It is what a retrieval or k-NN probe on the student would inherit from the teacher.
- ``linear_cka``: linear centred kernel alignment (Kornblith et al. 2019), invariant to rotations and
  isotropic scaling of either space, so it compares a 48-wide student with a 96-wide teacher.

Both are measured at the end of a run on the tiles the run held out of training
(:mod:`pipeline.distill.held_out`), whole and unaugmented, resized to the global-crop size, on the
embedding ``flows.embed`` writes by default (class token ⊕ mean patch token), for the student the run
started from and for the exported EMA student. A random teacher (the tiny configs) gets a control: an
unrelated random network of its architecture. Random ViTs share much of their geometry on H&E tiles
(they all follow colour and density), so a student that learns that shared part draws closer to any
random teacher; only a rise above the control's is the student learning its own teacher.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.distill.config import DistillConfig
from pipeline.distill.held_out import HeldOutSplit
from pipeline.distill.networks import seeded_model
from pipeline.distill.prototypes import DistilledHeads, initial_heads, measure_prototypes
from pipeline.models import embed
from storage.jpeg_codec import decode_tile


def knn_overlap(teacher: torch.Tensor, student: torch.Tensor, k: int = 10) -> float:
    """Mean share of common ``k`` nearest cosine neighbours of each row of ``[n, D_t]`` and ``[n, D_s]``."""
    n = len(teacher)
    if not 0 < k < n:
        raise ValueError(f"k-NN overlap needs 0 < k < n, got k={k} for n={n} tiles")

    def neighbours(x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(x.double(), dim=1)
        similarity = x @ x.T
        similarity.fill_diagonal_(-torch.inf)  # a tile is not its own neighbour
        return similarity.topk(k, dim=1).indices

    ours, theirs = neighbours(teacher), neighbours(student)
    common = (ours.unsqueeze(2) == theirs.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(common.double().mean() / k)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` of the column-centred ``[n, D_x]`` and ``[n, D_y]``."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def held_out_tiles(stores: list[str], count: int, size_px: int, split: int = 0) -> torch.Tensor:
    """The tiles a run with ``agreement_tiles = count`` and ``agreement_split = split`` never trains on
    (:mod:`pipeline.distill.held_out`), store by store in the split's order, each unit's in tile order,
    uint8 ``[n, size_px, size_px, 3]``, resized (antialiased bilinear) to the global-crop size: the student
    is trained at that size only, and stores may hold other tile sizes.
    """
    held_out = HeldOutSplit.of(stores, count, split)
    tiles: list[torch.Tensor] = []
    for store, (source, units) in enumerate(zip(held_out.sources, held_out.units)):
        for unit in units:
            wanted = held_out.held_out_in(store, unit)
            if wanted:
                block = torch.from_numpy(np.stack([decode_tile(data) for data in source.read_tiles(unit, wanted)]))
                tiles.append(resized_tiles(block, size_px))
    return torch.cat(tiles) if tiles else torch.empty((0, size_px, size_px, 3), dtype=torch.uint8)


def resized_tiles(tiles: torch.Tensor, size_px: int) -> torch.Tensor:
    """uint8 ``[n, H, W, 3]`` tiles at ``size_px`` (antialiased bilinear), as they are when already that size."""
    if tiles.shape[1:3] == (size_px, size_px):
        return tiles
    resized = nn.functional.interpolate(
        tiles.permute(0, 3, 1, 2).float(), size=(size_px, size_px), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@torch.no_grad()
def embeddings(backbone: nn.Module, tiles: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Class token ⊕ mean patch token ``[n, 2D]`` (float32, CPU) of uint8 ``tiles`` ``[n, H, W, 3]``, in batches."""
    was_training = backbone.training
    backbone.eval()
    try:
        return torch.cat(
            [embed(backbone, tiles[i : i + batch], "cls+mean").float().cpu() for i in range(0, len(tiles), batch)]
        )
    finally:
        backbone.train(was_training)


def agreement(teacher: torch.Tensor, student: torch.Tensor, k: int) -> dict[str, float]:
    """``knn{k}_overlap`` and ``linear_cka`` of teacher and student embeddings of the same tiles."""
    return {
        f"knn{k}_overlap": round(knn_overlap(teacher, student, k), 4),
        "linear_cka": round(linear_cka(teacher, student), 4),
    }


def measure_agreement(
    config: DistillConfig,
    stores: list[str],
    teacher: nn.Module,
    student: nn.Module,
    device: torch.device,
    heads: DistilledHeads | None = None,
) -> dict[str, float | int]:
    """Agreement on the held-out tiles of the student the run started from (``*_before``) and of ``student``
    (``*_after``) with the teacher, and, when the teacher is random, with a control teacher (``control_*``):
    the teacher a run with the next seed would have, which the student never saw. With ``heads`` (runs with
    teacher heads) also the held-out prototype agreement (:mod:`pipeline.distill.prototypes`), ``student``
    with ``heads.student`` against the student the run started from with its initial heads. Every process
    must call it (the networks may be sharded); ``{}`` when too few tiles are held out for the k-NN overlap.
    """
    train = config.train
    tiles = held_out_tiles(stores, train.agreement_tiles, config.crops.global_crop_size, train.agreement_split)
    k = config.train.agreement_neighbours
    if len(tiles) <= k:
        return {}
    models, seed = config.models, config.train.seed
    initial_student = seeded_model(models.student, seed, device=device)
    initial = embeddings(initial_student, tiles)
    final = embeddings(student, tiles)
    references = {"": embeddings(teacher, tiles)}
    if models.teacher_weights is None:
        control = seeded_model(models.teacher, seed + 1, device=device, layerscale=models.random_teacher_layerscale)
        references["control_"] = embeddings(control, tiles)
    figures: dict[str, float | int] = {"tiles": len(tiles)}
    for prefix, reference in references.items():
        for when, embedded in (("before", initial), ("after", final)):
            figures.update({f"{prefix}{key}_{when}": value for key, value in agreement(reference, embedded, k).items()})
    if heads is not None:
        students = {
            "before": (initial_student, initial_heads(config, initial_student.embed_dim, device)),
            "after": (student, heads.student),
        }
        centers = {"dino": heads.dino_center, "ibot": heads.ibot_center}
        figures.update(measure_prototypes(tiles, teacher, heads.teacher, centers, students))
    return figures
