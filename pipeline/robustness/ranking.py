"""Exact cosine similarity and top-k retrieval of matched tiles, computed in bounded tiles.

The PLISM top-k accuracy of a slide pair (a, b) asks, for each tile ``a_i``,
whether its match ``b_i`` is among the k nearest of the 2n − 1 other tiles of
a and b by cosine similarity (and the same for each ``b_i``). The reference
(plismbench) builds the dense 2n × 2n matrix of ``[a; b]`` for every pair: four
n × n blocks, two of which (a·a and b·b) are the same for every pair a slide
is in. Here a slide's own block is reduced once to each tile's ``k_max``
largest similarities (:func:`prepare_slide`), and a pair computes only its
cross block a·bᵀ, once, tile by tile, counting for both directions
at once how many candidates outrank the match (:func:`pair_metrics`). Only
counts are needed: the match is in the top k exactly when fewer than k
candidates outrank it, and at most ``k_max`` of a slide's own tiles can matter.

Ties (exactly equal similarities) follow one fixed rule, that of a stable
sort of the 2n − 1 candidates in the order of ``[a; b]``: among equal
similarities the candidate with the lower index in the concatenation ranks
first. The query tile itself is excluded by index. The reference has no
deterministic rule: it keeps positions 1..k of ``argpartition(-cos, range(1,
k_max + 1))``, so which of several tied candidates it keeps depends on
NumPy's (or CuPy's) selection internals, and a tile tied with the query's own
similarity can be dropped in place of the query. See ``docs/performance.md``.

Cosines are dot products of rows scaled to unit norm once (one GEMM per
tile, no division pass), in float32. Similarities come in square tiles of
``block`` × ``block``, so memory beyond the features and a few numbers per tile
does not grow with n. On
data whose unit rows and dot products are exact in float32 (small integers
with power-of-two norms), any block size gives bit-identical similarities and
hence identical results, ties included; otherwise blocks of other shapes may
round a similarity differently in its last bit, which can only reorder
candidates within an ulp of each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

METRIC_COSINE = "cosine_similarity"


def topk_column(k: int) -> str:
    """Column name of the top-k accuracy, as in the reference's ``metrics.csv``."""
    return f"top_{k}_accuracy"


@dataclass(frozen=True)
class PreparedSlide:
    """One slide's unit-norm features and what its own n × n block contributes to every pair it is in.

    ``unit``: ``[n, D]`` float32 rows of norm 1; ``nearest``: ``[n, k_max]``,
    each tile's largest cosine similarities to the other tiles of the slide,
    descending, padded with −inf when the slide has fewer than ``k_max + 1`` tiles.
    """

    unit: torch.Tensor
    nearest: torch.Tensor


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit Euclidean norm; a zero row has no direction, so no cosine, and is refused."""
    norms = (features * features).sum(dim=1).sqrt()
    if bool((norms == 0).any()):
        zero = torch.nonzero(norms == 0).flatten()[:5].tolist()
        raise ValueError(f"tiles with all-zero features have no cosine similarity (rows {zero}...)")
    return features / norms[:, None]


def spans(n: int, block: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of the consecutive blocks covering ``range(n)``."""
    return [(start, min(start + block, n)) for start in range(0, n, block)]


class TileBuffer:
    """One similarity tile and one boolean tile, reused so that a pair allocates nothing per tile."""

    def __init__(self, block: int, device: torch.device) -> None:
        self.sims = torch.empty(block * block, dtype=torch.float32, device=device)
        self.mask = torch.empty(block * block, dtype=torch.bool, device=device)

    def similarities(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``[len(rows), len(cols)]`` cosines of unit rows, written into the (contiguous) buffer."""
        out = self.sims[: rows.shape[0] * cols.shape[0]].view(rows.shape[0], cols.shape[0])
        return torch.matmul(rows, cols.T, out=out)

    def count(self, sims: torch.Tensor, threshold: torch.Tensor, dim: int) -> torch.Tensor:
        """How many elements of each row (``dim=1``) or column (``dim=0``) exceed ``threshold``."""
        mask = self.mask[: sims.numel()].view(sims.shape)
        torch.gt(sims, threshold, out=mask)
        return mask.view(torch.uint8).sum(dim=dim, dtype=torch.int32)  # bool sums promote to int64: slower


def prepare_slide(features: torch.Tensor, k_max: int, block: int) -> PreparedSlide:
    """Unit rows and each tile's ``k_max`` nearest within-slide similarities, tile by tile."""
    unit = unit_rows(features)
    n = unit.shape[0]
    buffer = TileBuffer(block, unit.device)
    nearest = torch.full((n, k_max), float("-inf"), dtype=unit.dtype, device=unit.device)
    for r0, r1 in spans(n, block):
        best = nearest[r0:r1]
        for c0, c1 in spans(n, block):
            sims = buffer.similarities(unit[r0:r1], unit[c0:c1])
            if c0 == r0:
                sims.diagonal().fill_(float("-inf"))  # a tile is not its own neighbour
            candidates = torch.cat([best, torch.topk(sims, min(k_max, c1 - c0), dim=1).values], dim=1)
            best = torch.topk(candidates, k_max, dim=1).values
        nearest[r0:r1] = best
    return PreparedSlide(unit, nearest)


def matched_cosines(a: PreparedSlide, b: PreparedSlide) -> torch.Tensor:
    """``[n]`` cosine of each tile with its match, the threshold its competitors must reach."""
    return (a.unit * b.unit).sum(dim=1)


def cross_outrank_counts(
    a: PreparedSlide, b: PreparedSlide, matched: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile, how many tiles of the *other* slide outrank its match: ``(for a_i, for b_i)``.

    Every element of the cross block a·bᵀ is compared twice: against its
    row's threshold (is b_j ahead of b_i for query a_i?) and its column's
    (is a_i ahead of a_j for query b_j?). Ties go to the lower index in
    ``[a; b]``: for query a_i the tied b_j wins when j < i; for query b_j the
    tied a_i wins when i < j. The match itself (the diagonal) is excluded.
    """
    n = a.unit.shape[0]
    device = a.unit.device
    buffer = TileBuffer(block, device)
    for_a = torch.zeros(n, dtype=torch.int32, device=device)
    for_b = torch.zeros(n, dtype=torch.int32, device=device)
    # For floats, x >= t exactly when x > (the float just below t): ">=" becomes ">" against a lowered threshold.
    lowered = torch.nextafter(matched, torch.tensor(float("-inf"), device=device))
    side = min(block, n)
    lower = torch.ones(side, side, dtype=torch.bool, device=device).tril(diagonal=-1)  # column index < row index
    for r0, r1 in spans(n, block):
        for c0, c1 in spans(n, block):
            sims = buffer.similarities(a.unit[r0:r1], b.unit[c0:c1])
            if c0 < r0:  # every column index below every row index: b_j wins ties for a_i, a_i loses them for b_j
                row_t, col_t = lowered[r0:r1, None], matched[None, c0:c1]
            elif c0 > r0:
                row_t, col_t = matched[r0:r1, None], lowered[None, c0:c1]
            else:
                sims.diagonal().fill_(float("-inf"))
                tri = lower[: r1 - r0, : c1 - c0]
                row_t = torch.where(tri, lowered[r0:r1, None], matched[r0:r1, None])
                col_t = torch.where(tri, matched[None, c0:c1], lowered[None, c0:c1])
            for_a[r0:r1] += buffer.count(sims, row_t, dim=1)
            for_b[c0:c1] += buffer.count(sims, col_t, dim=0)
    return for_a, for_b


def within_outrank_counts(slide: PreparedSlide, matched: torch.Tensor, ties_win: bool) -> torch.Tensor:
    """Per tile, how many of its own slide's tiles outrank its match, capped at ``k_max``.

    The cap is harmless: a match with ``k_max`` competitors ahead is outside every top-k.
    """
    if ties_win:
        return (slide.nearest >= matched[:, None]).sum(dim=1, dtype=torch.int32)
    return (slide.nearest > matched[:, None]).sum(dim=1, dtype=torch.int32)


def pair_metrics(a: PreparedSlide, b: PreparedSlide, ks: Sequence[int], block: int) -> dict[str, float]:
    """Mean matched cosine and bidirectional top-k accuracies of one slide pair; a is first in ``[a; b]``."""
    matched = matched_cosines(a, b)
    cross_a, cross_b = cross_outrank_counts(a, b, matched, block)
    # a's own tiles precede b_i in [a; b], so they win ties against it; b's own tiles follow a_i and lose them.
    ahead_a = cross_a + within_outrank_counts(a, matched, ties_win=True)
    ahead_b = cross_b + within_outrank_counts(b, matched, ties_win=False)
    metrics = {METRIC_COSINE: float(matched.double().mean())}
    for k in ks:
        hits_a = (ahead_a < k).double().mean()
        hits_b = (ahead_b < k).double().mean()
        metrics[topk_column(k)] = float((hits_a + hits_b) / 2)
    return metrics
