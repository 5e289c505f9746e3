"""PLISM robustness metrics (paper §3.2.2, §7.3): how little a model's features move across conditions.

Two metrics over matched tiles (row i of every slide is the same tissue
location): the mean cosine similarity of matched tiles, and the top-k
accuracy of retrieving a tile's match among the other tiles of both slides.
Both are computed for every pair of conditions (:func:`robustness_table`),
then summarised by pair group (:func:`summarise`) and into one score
(:func:`summary_score`). Plain functions on arrays: no Prefect, no files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pipeline.robustness.pairs import (
    ALL_PAIRS,
    DEFAULT_BLOCK,
    DEFAULT_KS,
    GROUPS,
    INTER_BOTH,
    INTER_SCANNER,
    INTER_STAINING,
    Condition,
    as_features,
    pair_group,
    robustness_table,
)
from pipeline.robustness.ranking import pair_metrics, prepare_slide, topk_column, unit_rows
from pipeline.robustness.summary import summarise, summary_score

__all__ = [
    "ALL_PAIRS",
    "GROUPS",
    "INTER_BOTH",
    "INTER_SCANNER",
    "INTER_STAINING",
    "Condition",
    "cosine_similarity",
    "pair_group",
    "robustness_table",
    "summarise",
    "summary_score",
    "topk_accuracy",
]


def matched_pair(a: Any, b: Any, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``[n, D]`` float32 tensors on one device, refused unless their tiles match one to one."""
    fa, fb = as_features(a, None, device), as_features(b, None, device)
    if fa.shape != fb.shape:
        raise ValueError(f"matched tiles need equal shapes, got {tuple(fa.shape)} and {tuple(fb.shape)}")
    return fa, fb


def cosine_similarity(a: Any, b: Any, device: torch.device | str | None = None) -> float:
    """Mean over matched tiles of cos(a_i, b_i); ``a`` and ``b`` are ``[n, D]``."""
    fa, fb = matched_pair(a, b, device)
    return float((unit_rows(fa) * unit_rows(fb)).sum(dim=1).double().mean())


def topk_accuracy(
    a: Any,
    b: Any,
    ks: Sequence[int] = DEFAULT_KS,
    device: torch.device | str | None = None,
    block: int = DEFAULT_BLOCK,
) -> dict[int, float]:
    """Top-k accuracy of a slide pair, a→b and b→a averaged, for each k in ``ks``.

    Tile ``a_i`` scores a hit when ``b_i`` is among its k nearest (by cosine)
    of the 2n − 1 other tiles of ``a`` and ``b``; ties rank the earlier tile of
    ``[a; b]`` first (see :mod:`pipeline.robustness.ranking`).
    """
    fa, fb = matched_pair(a, b, device)
    k_max = max(ks)
    metrics = pair_metrics(prepare_slide(fa, k_max, block), prepare_slide(fb, k_max, block), ks, block)
    return {k: metrics[topk_column(k)] for k in ks}
