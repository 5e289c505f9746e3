"""Robustness figures in the style of the paper: per-group distributions (Figure 1), scanner vs staining
robustness (Figure 4), and a condition × condition heat map of one metric.

Each function takes the per-pair tables of :func:`pipeline.robustness.robustness_table`
(one per model) and writes one PNG; matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.robustness import GROUPS, INTER_SCANNER, INTER_STAINING  # noqa: E402
from pipeline.robustness.summary import group_rows  # noqa: E402


def group_distributions(pairs_by_model: dict[str, pd.DataFrame], metrics: list[str], path: Path) -> Path:
    """One panel per metric: a box per model and pair group (Figure 1 of the paper)."""
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    models = list(pairs_by_model)
    width = 0.8 / len(models)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for m, model in enumerate(models):
            data = [group_rows(pairs_by_model[model], group)[metric].to_numpy(float) for group in GROUPS]
            positions = np.arange(len(GROUPS)) + (m - (len(models) - 1) / 2) * width
            boxes = axis.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                                 showfliers=False)
            colour = plt.cm.tab10(m % 10)
            for box in boxes["boxes"]:
                box.set_facecolor(colour)
            axis.plot([], [], color=colour, linewidth=6, label=model)
        axis.set_xticks(np.arange(len(GROUPS)), [g.replace(", ", ",\n") for g in GROUPS], fontsize=8)
        axis.set_title(metric.replace("_", " "))
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def scanner_vs_staining(pairs_by_model: dict[str, pd.DataFrame], metric: str, path: Path) -> Path:
    """Median ``metric`` over inter-scanner pairs against inter-staining pairs, one point per model (Figure 4)."""
    figure, axis = plt.subplots(figsize=(5, 5))
    for m, (model, pairs) in enumerate(pairs_by_model.items()):
        x = float(np.median(group_rows(pairs, INTER_SCANNER)[metric]))
        y = float(np.median(group_rows(pairs, INTER_STAINING)[metric]))
        axis.scatter([x], [y], color=plt.cm.tab10(m % 10), s=60)
        axis.annotate(model, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel(f"robustness to scanners: median {metric.replace('_', ' ')}")
    axis.set_ylabel(f"robustness to stainings: median {metric.replace('_', ' ')}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def pair_matrix(pairs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Condition × condition matrix of ``metric`` (symmetric; 1 on the diagonal, a slide against itself)."""
    names = list(dict.fromkeys([*pairs["condition_a"], *pairs["condition_b"]]))
    matrix = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for row in pairs.itertuples(index=False):
        value = getattr(row, metric)
        matrix.loc[row.condition_a, row.condition_b] = value
        matrix.loc[row.condition_b, row.condition_a] = value
    return matrix


def heat_map(matrix: pd.DataFrame, title: str, path: Path) -> Path:
    size = 1.2 + 0.38 * len(matrix)
    figure, axis = plt.subplots(figsize=(size + 1.2, size))
    image = axis.imshow(matrix.to_numpy(float), vmin=0, vmax=1, cmap="viridis")
    axis.set_xticks(range(len(matrix)), matrix.columns, rotation=90, fontsize=7)
    axis.set_yticks(range(len(matrix)), matrix.index, fontsize=7)
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
