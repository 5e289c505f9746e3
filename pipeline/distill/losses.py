"""Distillation objectives (paper §3.1.1): DINO on class tokens, iBOT on every patch token, or regression.

The teacher targets and the cross-entropies follow DINOv2 (``dinov2/loss/dino_clstoken_loss.py``,
``dinov2/loss/ibot_patch_loss.py``, normalisations from ``dinov2/train/ssl_meta_arch.py``); the paper
(following RoB, Duval et al. 2023) drops iBOT's masking, so the patch loss covers all patches.

Targets are computed without gradients and every softmax / log-softmax runs in float32, whatever the
autocast dtype of the logits: with 131,072 prototypes, bfloat16 probabilities would lose the tail.
Statistics that span the batch (centre, Sinkhorn-Knopp sums) are all-reduced over the ranks when
``torch.distributed`` is initialised, so every rank gets the targets of the global batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Centering = Literal["centering", "sinkhorn_knopp"]
SINKHORN_ITERATIONS = 3  # DINOv2's default


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """Reduce ``tensor`` in place over the ranks, or leave it as is in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def _global_mean(rows: torch.Tensor) -> torch.Tensor:
    """Mean ``[K]`` of ``rows`` ``[M, K]`` over the rows of every rank (counts reduced too: ranks may differ)."""
    rows = rows.float()
    totals = torch.cat([rows.sum(dim=0), rows.new_tensor([len(rows)])])
    _all_reduce(totals)
    return totals[:-1] / totals[-1]


@torch.no_grad()
def _sinkhorn_knopp(logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """DINOv2's Sinkhorn-Knopp targets ``[M, K]`` for ``logits`` ``[M, K]`` (M samples on this rank).

    With ``Q = exp(logits / teacher_temp)ᵀ`` (``[K, M_all]`` over all ranks' samples): divide by its total,
    then 3 times make every prototype row sum to ``1/K`` (row sums all-reduced) and every sample column
    sum to ``1/M_all``; finally scale by ``M_all`` so that each sample's probabilities sum to 1.
    Subtracting the global maximum first changes nothing (the first division cancels it) but keeps
    ``exp`` finite when a logit exceeds ``88 * teacher_temp``, which DINOv2's version does not.
    """
    logits = logits.float()
    shift = _all_reduce(logits.max(), op=dist.ReduceOp.MAX)
    q = torch.exp((logits - shift) / teacher_temp).t()
    total, n_samples = _all_reduce(torch.stack([q.sum(), q.new_tensor(q.shape[1])]))
    n_prototypes = q.shape[0]
    q /= total
    for _ in range(SINKHORN_ITERATIONS):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_samples
    q *= n_samples
    return q.t()


def _cross_entropy(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """``-Σ_k p_t log p_s`` over the last axis; the teacher side never receives a gradient."""
    return -(teacher_probs.detach().float() * student_log_probs).sum(dim=-1)


class _TeacherTargets(nn.Module):
    """Centre buffer and target rule shared by the class-token and patch losses."""

    def __init__(
        self, center_shape: tuple[int, ...], student_temp: float, center_momentum: float, centering: Centering
    ) -> None:
        super().__init__()
        if centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"centering must be 'centering' or 'sinkhorn_knopp', got {centering!r}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        # Same shape as DINOv2's buffer, so a DINOv2 centre loads as is.
        self.register_buffer("center", torch.zeros(center_shape))

    @torch.no_grad()
    def _targets(self, logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Teacher probabilities ``[M, K]`` for logits ``[M, K]``."""
        if self.centering == "sinkhorn_knopp":
            return _sinkhorn_knopp(logits, teacher_temp)
        return F.softmax((logits.float() - self.center.view(1, -1)) / teacher_temp, dim=-1)

    @torch.no_grad()
    def _update(self, batch_center: torch.Tensor) -> None:
        """``center ← m · center + (1 − m) · batch_center``; DINOv2 keeps no centre under Sinkhorn-Knopp."""
        if self.centering == "centering":
            self.center.mul_(self.center_momentum).add_(
                batch_center.view_as(self.center), alpha=1 - self.center_momentum
            )

    def _student_log_probs(self, student_logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(student_logits.float() / self.student_temp, dim=-1)


class DINOLoss(_TeacherTargets):
    """Cross-entropy between the teacher's class-token targets and the student's, over crop pairs.

    ``forward`` returns ``Σ_{i<G} Σ_{j≠i} mean_b CE(p_t[i]_b, s[j]_b) / (G·(C−1))`` for ``G`` global and
    ``C`` crops in all: every student crop against every teacher global crop except its own view, divided
    by the number of such pairs, ``G(G−1) + G·L`` with ``L`` local crops. That is DINOv2's
    ``n_global_crops_loss_terms + n_local_crops_loss_terms`` (ssl_meta_arch.py: its global term, a mean over
    both swapped global crops times ``loss_scales = 2``, is the sum of the ``G(G−1) = 2`` global pairs).

    Per step: ``probs = teacher_probabilities(t, temp)``, then ``update_center(t)`` with the same raw
    logits, so the centre used at a step averages earlier batches only, as DINOv2's deferred update does.
    """

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9, centering: Centering = "centering"
    ) -> None:
        super().__init__((1, out_dim), student_temp, center_momentum, centering)

    def teacher_probabilities(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Targets ``[G*B, K]`` float32 from the teacher head's logits ``[G*B, K]`` of the global crops:
        ``softmax((t − center) / teacher_temp)`` or Sinkhorn-Knopp over the global batch.
        """
        return self._targets(teacher_logits, teacher_temp)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the mean teacher logit ``[G*B, K] → [K]`` over all ranks (a no-op under Sinkhorn-Knopp)."""
        self._update(_global_mean(teacher_logits))

    def forward(self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]) -> torch.Tensor:
        """``student_logits``: one ``[B, K]`` per crop, global crops first, in the teacher's order;
        ``teacher_probs``: one ``[B, K]`` per global crop. Returns the scalar loss above.
        """
        n_global, n_crops = len(teacher_probs), len(student_logits)
        n_pairs = n_global * (n_crops - 1)
        if n_crops < n_global or n_pairs == 0:
            raise ValueError(
                f"DINO loss needs the {n_global} global crops among more than one student crop, "
                f"got {n_crops} student crops"
            )
        total = student_logits[0].new_zeros((), dtype=torch.float32)
        for j, logits in enumerate(student_logits):
            log_probs = self._student_log_probs(logits)
            for i, probs in enumerate(teacher_probs):
                if i != j:
                    total = total + _cross_entropy(probs, log_probs).mean()
        return total / n_pairs


class IBOTPatchLoss(_TeacherTargets):
    """Cross-entropy between teacher and student patch targets of the same global crop, at every patch.

    ``forward`` returns ``mean_b mean_n CE(p_t[b, n], s[b, n])`` over the ``B`` stacked global crops and
    their ``N`` patches: DINOv2's ``forward_masked`` weighs each masked patch by ``1 / n_masked(image)``
    and divides by the number of images, then scales by ``loss_scales · ibot_loss_scale = 2 · 1/2``; with
    every patch "masked" (paper: no masking) that is the mean over patches, then over images.
    """

    def __init__(
        self,
        patch_out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: Centering = "centering",
    ) -> None:
        super().__init__((1, 1, patch_out_dim), student_temp, center_momentum, centering)

    def teacher_probabilities(self, teacher_patch_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Targets ``[B, N, K]`` float32; under Sinkhorn-Knopp every patch of every rank is a sample."""
        return self._targets(teacher_patch_logits.flatten(0, 1), teacher_temp).view(teacher_patch_logits.shape)

    @torch.no_grad()
    def update_center(self, teacher_patch_logits: torch.Tensor) -> None:
        """EMA of DINOv2's batch centre: per-image mean over patches, then mean over images and ranks."""
        self._update(_global_mean(teacher_patch_logits.float().mean(dim=1)))

    def forward(self, student_patch_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """``student_patch_logits`` and ``teacher_probs`` ``[B, N, K]`` (global crops stacked) → scalar."""
        per_patch = _cross_entropy(teacher_probs, self._student_log_probs(student_patch_logits))
        return per_patch.mean(dim=-1).mean()


class TokenRegressionLoss(nn.Module):
    """Head-free distillation: regress projected student tokens onto the teacher's raw tokens.

    With ``d(x, y) = (1 − cos(x, y)) + mean_c smoothL1(x_c − y_c)`` (smooth-L1 with β = 1:
    ``0.5 u²`` if ``|u| < 1`` else ``|u| − 0.5``, averaged over the ``D_t`` channels), the loss is
    ``mean_b d(P_cls s_cls[b], t_cls[b]) + mean_b mean_n d(P_patch s[b, n], t[b, n])``. The cosine term
    aligns directions whatever the teacher's scale; smooth-L1 also matches magnitudes without letting
    outlier channels dominate. ``P_cls`` and ``P_patch`` are learned linear maps (with bias) from the
    student's width to the teacher's: their parameters belong in the student's optimiser.
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.cls_projector = nn.Linear(student_dim, teacher_dim)
        self.patch_projector = nn.Linear(student_dim, teacher_dim)

    def forward(
        self,
        student_cls: torch.Tensor,
        student_patches: torch.Tensor,
        teacher_cls: torch.Tensor,
        teacher_patches: torch.Tensor,
    ) -> torch.Tensor:
        """Class tokens ``[B, D_s]`` / ``[B, D_t]`` and patch tokens ``[B, N, D_s]`` / ``[B, N, D_t]`` → scalar."""
        cls = _token_distance(self.cls_projector(student_cls), teacher_cls).mean()
        patches = _token_distance(self.patch_projector(student_patches), teacher_patches).mean(dim=-1).mean()
        return cls + patches


def _token_distance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(1 − cosine) + channel-mean smooth-L1`` per token, in float32; no gradient to the target."""
    prediction, target = prediction.float(), target.detach().float()
    smooth_l1 = F.smooth_l1_loss(prediction, target, reduction="none", beta=1.0).mean(dim=-1)
    return 1 - F.cosine_similarity(prediction, target, dim=-1) + smooth_l1
