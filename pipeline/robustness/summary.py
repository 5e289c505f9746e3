"""Aggregates of per-pair robustness metrics by pair group, and the single leaderboard score.

Statistics follow the reference (plismbench ``aggregate_metrics``): the
population standard deviation (``ddof=0``) and the IQR as the difference of
NumPy's linearly interpolated 75th and 25th percentiles. The reference rounds
them to 3 decimals before ranking; nothing is rounded here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.robustness.pairs import ALL_PAIRS, GROUPS, INTER_BOTH, INTER_SCANNER, INTER_STAINING
from pipeline.robustness.ranking import METRIC_COSINE, topk_column

STATISTICS = ("count", "mean", "std", "median", "iqr")
SCORE_K = 10


def metric_columns(pairs: pd.DataFrame) -> list[str]:
    """The metric columns of a :func:`~pipeline.robustness.robustness_table`, cosine first."""
    return [c for c in pairs.columns if c == METRIC_COSINE or (c.startswith("top_") and c.endswith("_accuracy"))]


def group_rows(pairs: pd.DataFrame, group: str) -> pd.DataFrame:
    """The pairs of one group; "all" is every pair."""
    return pairs if group == ALL_PAIRS else pairs[pairs["group"] == group]


def describe(values: np.ndarray) -> list[float]:
    """Count, mean, std, median and IQR of one metric over the pairs of one group (NaN when empty)."""
    if values.size == 0:
        return [0.0] + [float("nan")] * 4
    q25, q50, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return [float(values.size), float(values.mean()), float(values.std()), float(q50), float(q75 - q25)]


def summarise(pairs: pd.DataFrame) -> pd.DataFrame:
    """Group × statistic rows (MultiIndex ``(group, statistic)``), one column per metric."""
    metrics = metric_columns(pairs)
    index = pd.MultiIndex.from_product([GROUPS, STATISTICS], names=["group", "statistic"])
    summary = pd.DataFrame(index=index, columns=metrics, dtype=float)
    for group in GROUPS:
        rows = group_rows(pairs, group)
        for metric in metrics:
            summary.loc[group, metric] = describe(rows[metric].to_numpy(dtype=float))
    return summary


def summary_score(pairs: pd.DataFrame) -> float:
    """The plismbench leaderboard metric: mean of four medians over pairs.

    Median cosine similarity over all pairs, and median top-10 accuracy over
    the inter-scanner, inter-staining and inter-scanner, inter-staining pairs.
    """
    top = topk_column(SCORE_K)
    if top not in pairs.columns:
        raise ValueError(f"the summary score needs {top}; compute the table with 10 among ks")
    parts = [(ALL_PAIRS, METRIC_COSINE), (INTER_SCANNER, top), (INTER_STAINING, top), (INTER_BOTH, top)]
    medians = []
    for group, metric in parts:
        values = group_rows(pairs, group)[metric].to_numpy(dtype=float)
        if values.size == 0:
            raise ValueError(f"no {group} pairs: the summary score needs at least one")
        medians.append(float(np.median(values)))
    return float(np.mean(medians))
