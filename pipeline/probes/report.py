"""Per-fold probe results as the tables a run writes: ``results.csv`` and ``results.md``."""

from __future__ import annotations

import pandas as pd

SUMMARY_FOLDS = ("mean", "std")


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation of each metric over the folds (NaN folds skipped), in the metrics' order.

    The standard deviation is the population one (``ddof=0``), as HEST-Benchmark
    reports ``pearson_std`` over its splits.
    """
    grouped = results.groupby("metric", sort=False)["value"]
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=0), "folds": grouped.size()}).reset_index()


def results_table(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with ``fold`` as text, followed by a ``mean`` and a ``std`` row per metric: ``results.csv``."""
    summary = summarise(results)
    rows = [summary.assign(fold=fold, value=summary[fold])[["fold", "metric", "value"]] for fold in SUMMARY_FOLDS]
    return pd.concat([results.astype({"fold": str}), *rows], ignore_index=True)


def results_markdown(results: pd.DataFrame, title: str, context: dict[str, object]) -> str:
    """A short report: ``context`` as a list, then one line per metric with its mean ± std and per-fold values."""
    folds = [str(f) for f in results["fold"].unique()]
    lines = [
        f"# {title}",
        "",
        *[f"- **{key}**: {value}" for key, value in context.items()],
        "",
        "| metric | mean | std | " + " | ".join(f"fold {f}" for f in folds) + " |",
        "|---|---|---|" + "---|" * len(folds),
    ]
    by_fold = results.astype({"fold": str}).pivot(index="metric", columns="fold", values="value")
    for row in summarise(results).itertuples(index=False):
        values = " | ".join(_number(by_fold.at[row.metric, f]) for f in folds)
        lines.append(f"| {row.metric} | {_number(row.mean)} | {_number(row.std)} | {values} |")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.4f}"
