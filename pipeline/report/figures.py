"""Robustness figures in the style of the paper: per-group distributions (Figure 1), scanner vs staining
robustness (Figure 4), and a condition × condition heat map of one metric.

Each function takes the per-pair tables of :func:`pipeline.robustness.robustness_table`
(one per model) and writes one PNG; matplotlib runs headless (Agg). Figures are saved at
:data:`DPI` and shown at their natural size (never scaled down in the page), at most
:data:`MAX_WIDTH_IN` wide, so that 11-pt text is 15 px on screen and fits a 1,280-px window.
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

DPI = 100  # one figure pixel per screen pixel at 100 % zoom
MAX_WIDTH_IN = 11.5  # 1,150 px: fits the report's 1,280-px window with its margins
matplotlib.rcParams.update(
    {"font.size": 11, "axes.titlesize": 12, "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10}
)


def group_distributions(pairs_by_model: dict[str, pd.DataFrame], metrics: list[str], path: Path) -> Path:
    """One panel per metric: a box per model and pair group (Figure 1 of the paper)."""
    figure, axes = plt.subplots(1, len(metrics), figsize=(min(MAX_WIDTH_IN, 5.5 * len(metrics)), 4.8), squeeze=False)
    models = list(pairs_by_model)
    width = 0.8 / len(models)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for m, model in enumerate(models):
            data = [group_rows(pairs_by_model[model], group)[metric].to_numpy(float) for group in GROUPS]
            positions = np.arange(len(GROUPS)) + (m - (len(models) - 1) / 2) * width
            boxes = axis.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False)
            colour = plt.cm.tab10(m % 10)
            for box in boxes["boxes"]:
                box.set_facecolor(colour)
            axis.plot([], [], color=colour, linewidth=6, label=model)
        axis.set_xticks(np.arange(len(GROUPS)), [g.replace(", ", ",\n") for g in GROUPS])
        axis.set_title(metric.replace("_", " "))
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def scanner_vs_staining(pairs_by_model: dict[str, pd.DataFrame], metric: str, path: Path) -> Path:
    """Median ``metric`` over inter-scanner pairs against inter-staining pairs, one point per model (Figure 4)."""
    figure, axis = plt.subplots(figsize=(6, 6))
    for m, (model, pairs) in enumerate(pairs_by_model.items()):
        x = float(np.median(group_rows(pairs, INTER_SCANNER)[metric]))
        y = float(np.median(group_rows(pairs, INTER_STAINING)[metric]))
        axis.scatter([x], [y], color=plt.cm.tab10(m % 10), s=60)
        axis.annotate(model, (x, y), textcoords="offset points", xytext=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel(f"robustness to scanners: median {metric.replace('_', ' ')}")
    axis.set_ylabel(f"robustness to stainings: median {metric.replace('_', ' ')}")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def pair_matrix(pairs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Condition × condition matrix of ``metric`` (symmetric; the diagonal, a slide against itself, is not
    measured and left empty).
    """
    names = list(dict.fromkeys([*pairs["condition_a"], *pairs["condition_b"]]))
    matrix = pd.DataFrame(np.full((len(names), len(names)), np.nan), index=names, columns=names)
    for row in pairs.itertuples(index=False):
        value = getattr(row, metric)
        matrix.loc[row.condition_a, row.condition_b] = value
        matrix.loc[row.condition_b, row.condition_a] = value
    return matrix


def heat_map(matrix: pd.DataFrame, title: str, path: Path) -> Path:
    """The matrix as colours; diagonal cells (not measured) hatched grey and labelled so."""
    size = min(MAX_WIDTH_IN - 1.5, 2.5 + 0.42 * len(matrix))
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    colours = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    image = axis.imshow(np.ma.masked_invalid(matrix.to_numpy(float)), vmin=0, vmax=1, cmap=colours)
    for i in range(len(matrix)):
        axis.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#888", lw=0))
    axis.set_xticks(range(len(matrix)), matrix.columns, rotation=90)
    axis.set_yticks(range(len(matrix)), matrix.index)
    axis.set_title(title)
    axis.set_xlabel("hatched grey diagonal: a condition against itself, not measured", fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
