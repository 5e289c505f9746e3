"""Join a labels table to an embedding store: the samples, features, targets and folds of a probe.

The labels table (CSV) has one row per sample:

- ``slide_id``: a slide of the embedding store (its folder name under ``slides/``);
- at tile level, which tile: ``tile``, the tile's row in that slide
  (0-based, the order of ``coords``), or ``x`` and ``y``, the tile's ``coords``
  (level-0 pixels of its top-left corner, as stored); ``tile`` wins when both are given;
- the fold column (``fold`` by default): the test fold the sample belongs to,
  e.g. a patient-level split;
- the targets: every other column, unless named explicitly. Regression takes
  numeric columns; classification exactly one column of labels.

At slide level a slide's feature is the mean of its tile embeddings (float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

KEY_COLUMNS = ("slide_id", "tile", "x", "y")
TASKS = ("regression", "classification")
LEVELS = ("slide", "tile")
_SHOWN = 5  # ids listed in an error message


class LabelsError(ValueError):
    """A labels table that does not fit the embedding store or the task; the message names the table."""


@dataclass(frozen=True)
class ProbeSettings:
    """What to probe: the task, the sample level, the fold column and the targets (``()``: all other columns)."""

    task: str = "regression"
    level: str = "slide"
    folds_column: str = "fold"
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS or self.level not in LEVELS:
            raise ValueError(f"task must be one of {TASKS} and level one of {LEVELS}: {self.task!r}, {self.level!r}")


@dataclass(frozen=True)
class ProbeInputs:
    """``features [sample, feature]`` float32, ``targets [sample, target]``, ``folds [sample]``, in table order."""

    features: np.ndarray
    targets: pd.DataFrame
    folds: np.ndarray


def load_probe_inputs(embeddings: Path | str, labels: Path | str, settings: ProbeSettings) -> ProbeInputs:
    """Read the embedding store and the labels CSV, and join them (see the module docstring)."""
    from storage.embedding_store import open_embeddings

    dataset = open_embeddings(embeddings)
    if "condition" in dataset.dims:
        raise LabelsError(f"{embeddings} embeds an aligned tile store; probes need a store of per-slide tiles")
    table = pd.read_csv(labels, dtype={"slide_id": str})
    return probe_inputs(dataset, table, settings, source=str(labels))


def probe_inputs(dataset, table: pd.DataFrame, settings: ProbeSettings, source: str = "labels") -> ProbeInputs:
    """Join ``table`` to ``dataset`` (from :func:`storage.embedding_store.open_embeddings`, per-slide layout)."""
    if table.empty:
        raise LabelsError(f"{source}: no rows")
    targets = _targets(table, settings, source)
    folds = _required(table, settings.folds_column, source)
    slide_ids = _required(table, "slide_id", source).astype(str)
    known = {slide_id: i for i, slide_id in enumerate(dataset.slide.values)}
    unknown = sorted(set(slide_ids) - set(known))
    if unknown:
        raise LabelsError(
            f"{source}: {len(unknown)} slide_id(s) not in the embedding store (or not completely "
            f"embedded): {_few(unknown)}"
        )
    # Tiles of one slide are contiguous and slides in order, so slide i holds rows bounds[i]:bounds[i + 1].
    bounds = np.searchsorted(dataset.slide_index.values, np.arange(len(known) + 1))
    slides = slide_ids.map(known).to_numpy()
    embeddings = dataset.embeddings.data
    if settings.level == "slide":
        _no_duplicates(table, ["slide_id"], source, hint="; tables with several rows per slide need --level tile")
        pooled = [embeddings[bounds[i] : bounds[i + 1]].astype(np.float32).mean(axis=0) for i in slides]
        features = np.stack(_compute(pooled))
    else:
        rows = _tile_rows(dataset, table, slides, bounds, source)
        features = np.asarray(embeddings[rows].astype(np.float32).compute())
    return ProbeInputs(features=features, targets=targets.reset_index(drop=True), folds=folds.to_numpy())


def _targets(table: pd.DataFrame, settings: ProbeSettings, source: str) -> pd.DataFrame:
    names = list(settings.targets) or [c for c in table.columns if c not in (*KEY_COLUMNS, settings.folds_column)]
    missing = [name for name in names if name not in table.columns]
    if missing or not names:
        raise LabelsError(f"{source}: target column(s) {missing or 'none'} not found; columns: {list(table.columns)}")
    targets = table[names]
    if settings.task == "classification" and len(names) != 1:
        raise LabelsError(f"{source}: classification takes one label column, got {names}; name one with --targets")
    if settings.task == "regression":
        text = [name for name in names if not pd.api.types.is_numeric_dtype(targets[name])]
        if text:
            raise LabelsError(f"{source}: regression targets must be numeric: {text}; choose columns with --targets")
    empty = targets.isna().any(axis=1)
    if empty.any():
        raise LabelsError(
            f"{source}: {int(empty.sum())} row(s) with a missing target, e.g. line(s) "
            f"{_few(list(np.flatnonzero(empty) + 2))}"
        )
    return targets


def _tile_rows(dataset, table: pd.DataFrame, slides: np.ndarray, bounds: np.ndarray, source: str) -> np.ndarray:
    """Store rows of each table row, from ``tile`` (row within the slide) or from ``x``, ``y``."""
    counts = bounds[slides + 1] - bounds[slides]
    if "tile" in table.columns:
        _no_duplicates(table, ["slide_id", "tile"], source)
        tile = _required(table, "tile", source).to_numpy()
        outside = (tile < 0) | (tile >= counts)
        if outside.any():
            bad = [f"{s}/{t}" for s, t in zip(table["slide_id"][outside], tile[outside])]
            raise LabelsError(f"{source}: {len(bad)} tile index(es) outside their slide: {_few(bad)}")
        return bounds[slides] + tile.astype(np.int64)
    if not {"x", "y"} <= set(table.columns):
        raise LabelsError(f"{source}: tile level needs a 'tile' column or 'x' and 'y' columns")
    _no_duplicates(table, ["slide_id", "x", "y"], source)
    coords = dataset["coords"].data
    wanted = sorted(set(slides))
    stored = pd.concat(
        [
            pd.DataFrame(
                {
                    "slide_id": dataset.slide.values[i],
                    "x": xy[:, 0],
                    "y": xy[:, 1],
                    "row": np.arange(bounds[i], bounds[i + 1]),
                }
            )
            for i, xy in zip(wanted, _compute([coords[bounds[i] : bounds[i + 1]] for i in wanted]))
        ]
    )
    keys = table[["slide_id", "x", "y"]].astype({"slide_id": str, "x": np.int64, "y": np.int64})
    joined = keys.merge(stored, on=["slide_id", "x", "y"], how="left")
    missing = joined["row"].isna().to_numpy()
    if missing.any():
        bad = [f"{s}@({x},{y})" for s, x, y in keys[missing].itertuples(index=False)]
        raise LabelsError(f"{source}: {len(bad)} (x, y) not a tile of its slide: {_few(bad)}")
    return joined["row"].to_numpy(dtype=np.int64)


def _required(table: pd.DataFrame, column: str, source: str) -> pd.Series:
    if column not in table.columns:
        raise LabelsError(f"{source}: no column {column!r}; columns: {list(table.columns)}")
    if table[column].isna().any():
        raise LabelsError(f"{source}: column {column!r} has {int(table[column].isna().sum())} empty value(s)")
    return table[column]


def _no_duplicates(table: pd.DataFrame, columns: list[str], source: str, hint: str = "") -> None:
    repeated = table[table.duplicated(columns, keep=False)][columns].drop_duplicates()
    if len(repeated):
        shown = ["/".join(map(str, row)) for row in repeated.itertuples(index=False)]
        raise LabelsError(f"{source}: {len(shown)} repeated {'/'.join(columns)}: {_few(shown)}{hint}")


def _compute(arrays: list) -> list[np.ndarray]:
    import dask

    return list(dask.compute(*arrays))


def _few(items: list) -> str:
    shown = ", ".join(map(str, items[:_SHOWN]))
    return shown + (f", … ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")
