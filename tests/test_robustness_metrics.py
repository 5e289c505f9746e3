"""PLISM robustness metrics: hand-computed pairs, invariant and random models, groups, block-wise == dense."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.robustness import (
    INTER_BOTH,
    INTER_SCANNER,
    INTER_STAINING,
    Condition,
    cosine_similarity,
    pair_group,
    robustness_table,
    summarise,
    summary_score,
    topk_accuracy,
)

STAININGS = ("GIVH", "GMH", "MY")
SCANNERS = ("AT2", "GT450", "P", "S210", "S360", "S60", "SQ")
PLISM_3X7 = [Condition(f"{st}_{sc}", st, sc) for st in STAININGS for sc in SCANNERS]


def dense_pair(a: np.ndarray, b: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Naive oracle: the full 2n × 2n cosine matrix of [a; b] (4 n × n blocks), rows ranked by a stable sort."""
    n = len(a)
    ab = np.concatenate([a, b]).astype(np.float32)
    unit = ab / np.sqrt((ab * ab).sum(axis=1))[:, None]
    cos = unit @ unit.T
    match = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    ranks = np.empty(2 * n, dtype=np.int64)
    for q in range(2 * n):
        others = np.delete(np.arange(2 * n), q)
        order = others[np.argsort(-cos[q, others], kind="stable")]
        ranks[q] = int(np.flatnonzero(order == match[q])[0])  # candidates ahead of the match
    out = {"cosine_similarity": float(np.diag(cos[:n, n:]).astype(np.float64).mean())}
    for k in ks:
        out[f"top_{k}_accuracy"] = ((ranks[:n] < k).mean() + (ranks[n:] < k).mean()) / 2
    return out


def reference_style_topk(a: np.ndarray, b: np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """Plismbench's recipe (argpartition, drop position 0 as the query itself); defined only without ties."""
    n = len(a)
    ab = np.concatenate([a, b]).astype(np.float64)
    norms = np.linalg.norm(ab, axis=1, keepdims=True)
    cos = (ab @ ab.T) / (norms * norms.T)
    nearest = np.argpartition(-cos, range(1, max(ks) + 1), axis=1)[:, 1 : max(ks) + 1]
    match = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    hits = {k: (nearest[:, :k] == match[:, None]).any(axis=1) for k in ks}
    return {k: (h[:n].mean() + h[n:].mean()) / 2 for k, h in hits.items()}


def tied_features(rng: np.random.Generator, n_conditions: int, n: int) -> np.ndarray:
    """``[C, n, 4]`` features full of exact ties, whose cosines are exact in float32 whatever the GEMM.

    Every row is one of 24 directions (±e_k, or all four entries ±1) scaled by 1 or 2,
    so norms are 1, 2 or 4: unit rows are exact and so are their dot products.
    Rows repeat within a slide, and across slides many tiles keep their direction.
    """
    axes = np.concatenate([np.eye(4), -np.eye(4)])
    corners = np.array(list(itertools.product((-1.0, 1.0), repeat=4)))
    directions = np.concatenate([axes, corners])
    base = rng.integers(0, len(directions), size=n)
    base[: n // 4] = base[n // 4 : 2 * (n // 4)]  # duplicated tiles within a slide
    slides = []
    for _ in range(n_conditions):
        moved = np.where(rng.random(n) < 0.4, rng.integers(0, len(directions), size=n), base)
        slides.append(directions[moved] * rng.choice([1.0, 2.0], size=(n, 1)))
    return np.stack(slides).astype(np.float32)


# --- cosine similarity -------------------------------------------------------------------------


def test_cosine_similarity_by_hand() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[3.0, 0.0], [1.0, 1.0]])
    assert cosine_similarity(a, b) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)


def test_cosine_similarity_refuses_unmatched_or_zero_tiles() -> None:
    with pytest.raises(ValueError, match="equal shapes"):
        cosine_similarity(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="all-zero"):
        cosine_similarity(np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]]))


# --- top-k accuracy ------------------------------------------------------------------------------


def test_topk_by_hand_without_ties() -> None:
    # a→b ranks of the match (1 = nearest): 1, 3, 4, 6; b→a: 2, 5, 7, 6 (b's tiles crowd each other).
    a = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], dtype=float)
    b = np.array([[0.1, 1.1], [0.2, 1.1], [0.3, 1.1], [0.4, 1.1]])
    got = topk_accuracy(a, b, ks=(1, 3, 5, 7))
    assert got == pytest.approx({1: 1 / 8, 3: 3 / 8, 5: 5 / 8, 7: 1.0})


def test_topk_ties_rank_the_earlier_tile_of_a_then_b_first() -> None:
    # Four identical directions: every similarity is 1, so the order of [a0, a1, b0, b1] decides.
    # a0 → b0: a1 ahead (earlier), b1 behind: rank 2.  a1 → b1: a0, b0 ahead: rank 3.
    # b0 → a0: a1, b1 behind: rank 1.                    b1 → a1: a0 ahead, b0 behind: rank 2.
    a = np.array([[1.0, 0.0], [2.0, 0.0]])
    b = np.array([[3.0, 0.0], [1.0, 0.0]])
    got = topk_accuracy(a, b, ks=(1, 2, 3))
    assert got == {1: 0.25, 2: 0.75, 3: 1.0}
    dense = dense_pair(a, b, (1, 2, 3))
    assert got == {k: dense[f"top_{k}_accuracy"] for k in (1, 2, 3)}


def test_topk_ties_at_the_match_similarity_by_hand() -> None:
    # a1 = (0, 1) is orthogonal to a0, b0 and its own match b1: three candidates tied at 0.
    # a0 → b0: rank 1; a1 → b1: a0 (index 0) and b0 (index 2) precede b1 (index 3): rank 3.
    # b0 → a0: rank 1 (b1 ties at 1 but comes later); b1 → a1: a0 and b0 at similarity 1: rank 3.
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert topk_accuracy(a, b, ks=(1, 2, 3)) == {1: 0.5, 2: 0.5, 3: 1.0}


def test_topk_equals_the_reference_recipe_without_ties() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(60, 8))
    b = a + rng.normal(scale=0.8, size=a.shape)
    ks = (1, 3, 5, 10)
    assert topk_accuracy(a, b, ks=ks) == pytest.approx(reference_style_topk(a, b, ks), abs=0)


def test_topk_all_candidates_is_always_a_hit() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 5, 3))
    assert topk_accuracy(a, b, ks=(9,)) == {9: 1.0}  # 2n - 1 = 9 candidates
    assert topk_accuracy(a[:1], b[:1], ks=(1,)) == {1: 1.0}  # one tile: its match is the only candidate


# --- invariant and random models ------------------------------------------------------------------


def test_invariant_model_scores_one_everywhere() -> None:
    rng = np.random.default_rng(3)
    tiles = rng.normal(size=(50, 16)).astype(np.float32)
    table = [Condition(f"{st}_{sc}", st, sc) for st in STAININGS for sc in SCANNERS[:2]]
    embeddings = np.broadcast_to(tiles, (len(table), 50, 16))  # read-only, as a memmap would be
    pairs = robustness_table(embeddings, table, device="cpu")
    metrics = [c for c in pairs.columns if c.endswith("_accuracy") or c == "cosine_similarity"]
    assert np.allclose(pairs[metrics].to_numpy(), 1.0, atol=1e-6)
    assert summary_score(pairs) == pytest.approx(1.0, abs=1e-6)


def test_random_model_scores_chance() -> None:
    rng = np.random.default_rng(4)
    n, conditions = 300, 6
    embeddings = rng.normal(size=(conditions, n, 64)).astype(np.float32)
    table = [Condition(f"c{i}", f"st{i % 2}", f"sc{i // 2}") for i in range(conditions)]
    pairs = robustness_table(embeddings, table, device="cpu")
    queries = 2 * n * len(pairs)
    for k in (1, 3, 5, 10):
        chance = k / (2 * n - 1)
        sigma = math.sqrt(chance * (1 - chance) / queries)
        assert abs(pairs[f"top_{k}_accuracy"].mean() - chance) < 4 * sigma
    assert abs(pairs["cosine_similarity"].mean()) < 0.02


# --- pair groups and aggregates -------------------------------------------------------------------


def test_pair_groups_of_plism_3x7() -> None:
    pairs = robustness_table(np.random.default_rng(5).normal(size=(21, 6, 4)), PLISM_3X7, device="cpu")
    assert len(pairs) == 210
    assert pairs["group"].value_counts().to_dict() == {INTER_BOTH: 126, INTER_SCANNER: 63, INTER_STAINING: 21}
    counts = summarise(pairs).xs("count", level="statistic")["cosine_similarity"].to_dict()
    assert counts == {INTER_SCANNER: 63, INTER_STAINING: 21, INTER_BOTH: 126, "all": 210}
    assert pair_group(PLISM_3X7[0], PLISM_3X7[1]) == INTER_SCANNER
    assert pair_group(PLISM_3X7[0], PLISM_3X7[7]) == INTER_STAINING
    assert pair_group(PLISM_3X7[0], PLISM_3X7[8]) == INTER_BOTH


def test_summarise_and_score_by_hand() -> None:
    pairs = pd.DataFrame(
        {
            "group": [INTER_SCANNER, INTER_SCANNER, INTER_STAINING, INTER_BOTH, INTER_BOTH, INTER_BOTH],
            "cosine_similarity": [0.9, 0.8, 0.7, 0.6, 0.5, 0.1],
            "top_10_accuracy": [1.0, 0.8, 0.4, 0.3, 0.2, 0.0],
        }
    )
    summary = summarise(pairs)
    both = summary.loc[INTER_BOTH, "top_10_accuracy"]
    assert both["mean"] == pytest.approx(0.5 / 3)
    assert both["std"] == pytest.approx(np.std([0.3, 0.2, 0.0]))  # population std, as the reference
    assert both["median"] == pytest.approx(0.2)
    assert both["iqr"] == pytest.approx(0.25 - 0.1)  # linear quantiles: 0.25 and 0.1
    assert summary.loc[("all", "median"), "cosine_similarity"] == pytest.approx(0.65)
    # mean of: median cosine over all (0.65), median top-10 inter-scanner (0.9), inter-staining (0.4), both (0.2)
    assert summary_score(pairs) == pytest.approx((0.65 + 0.9 + 0.4 + 0.2) / 4)
    with pytest.raises(ValueError, match="top_10"):
        summary_score(pairs.drop(columns="top_10_accuracy"))


# --- exactness of the block-wise computation ------------------------------------------------------


@pytest.mark.parametrize("block", [1, 3, 7, 16, 2048])
def test_blockwise_equals_dense_with_ties(block: int) -> None:
    rng = np.random.default_rng(6)
    embeddings = tied_features(rng, n_conditions=4, n=37)
    table = [Condition(f"c{i}", f"st{i % 2}", f"sc{i // 2}") for i in range(4)]
    ks = (1, 2, 3, 5, 10)
    pairs = robustness_table(embeddings, table, ks=ks, device="cpu", block=block)
    tied_pairs = 0
    for row, (i, j) in zip(pairs.itertuples(index=False), itertools.combinations(range(4), 2), strict=True):
        expected = dense_pair(embeddings[i], embeddings[j], ks)
        assert row.cosine_similarity == pytest.approx(expected.pop("cosine_similarity"), abs=1e-12)
        assert {k: getattr(row, k) for k in expected} == expected  # exact, ties included
        optimistic = {
            f"top_{k}_accuracy": v for k, v in topk_ranks_optimistic(embeddings[i], embeddings[j], ks).items()
        }
        tied_pairs += optimistic != expected
    assert tied_pairs > 0  # the data does exercise the tie rule


def topk_ranks_optimistic(a: np.ndarray, b: np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """Top-k if every tie went to the match: differs from ours only when ties decide a hit."""
    n = len(a)
    ab = np.concatenate([a, b]).astype(np.float32)
    unit = ab / np.sqrt((ab * ab).sum(axis=1))[:, None]
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    match = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    ahead = (cos > cos[np.arange(2 * n), match][:, None]).sum(axis=1)
    return {k: ((ahead[:n] < k).mean() + (ahead[n:] < k).mean()) / 2 for k in ks}


def test_subset_equals_slicing_first() -> None:
    rng = np.random.default_rng(7)
    embeddings = tied_features(rng, n_conditions=3, n=30)
    table = [Condition(f"c{i}", "st", f"sc{i}") for i in range(3)]
    subset = rng.permutation(30)[:17]
    got = robustness_table(embeddings, table, subset=subset, device="cpu", block=5)
    expected = robustness_table(embeddings[:, subset], table, device="cpu")
    pd.testing.assert_frame_equal(got, expected)
    with pytest.raises(ValueError, match="repeats"):
        robustness_table(embeddings, table, subset=[0, 1, 1], device="cpu")
