"""How far the student's embedding space agrees with the teacher's, by figures that do not come from the loss.

- ``knn_overlap``: for every tile, the share of its ``k`` nearest neighbours (cosine, among the other
  evaluation tiles) that the teacher's and the student's embeddings have in common, averaged over
  the tiles. 1 means both spaces rank neighbours alike; two unrelated spaces give about
  ``k / (n − 1)``. It is what a retrieval or k-NN probe on the student would inherit from the teacher.
- ``linear_cka``: linear centred kernel alignment (Kornblith et al. 2019), invariant to rotations and
  isotropic scaling of either space, so it compares a 48-wide student with a 96-wide teacher.

Both are measured at the end of a run on whole, unaugmented tiles (the training sees random crops
of them only) resized to the global-crop size, for the student the run started from and for the
exported EMA student.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models import embed
from storage.tile_units import open_tile_source


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


def evaluation_tiles(stores: list[str], count: int, size_px: int | None = None) -> torch.Tensor:
    """The first ``count`` tiles of ``stores`` in their fixed unit order, uint8 ``[n, S, S, 3]``, resized
    (antialiased bilinear) to ``size_px`` when given: the student is trained at the global-crop size only.
    """
    tiles: list[torch.Tensor] = []
    remaining = count
    for store in stores:
        source = open_tile_source(store)
        for unit in source.units():
            if remaining <= 0:
                break
            block = torch.from_numpy(source.read(unit)[:remaining])
            tiles.append(block)
            remaining -= len(block)
    if not tiles:
        return torch.empty((0, 0, 0, 3), dtype=torch.uint8)
    whole = torch.cat(tiles)
    if size_px is None or size_px == whole.shape[1]:
        return whole
    resized = nn.functional.interpolate(
        whole.permute(0, 3, 1, 2).float(), size=(size_px, size_px), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@torch.no_grad()
def embeddings(backbone: nn.Module, tiles: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Class-token embeddings ``[n, D]`` (float32, CPU) of uint8 ``tiles`` ``[n, H, W, 3]``, in batches."""
    was_training = backbone.training
    backbone.eval()
    try:
        return torch.cat(
            [embed(backbone, tiles[i : i + batch], "cls").float().cpu() for i in range(0, len(tiles), batch)]
        )
    finally:
        backbone.train(was_training)


def agreement(teacher: torch.Tensor, student: torch.Tensor, k: int) -> dict[str, float]:
    """``knn{k}_overlap`` and ``linear_cka`` of teacher and student embeddings of the same tiles."""
    return {
        f"knn{k}_overlap": round(knn_overlap(teacher, student, k), 4),
        "linear_cka": round(linear_cka(teacher, student), 4),
    }
