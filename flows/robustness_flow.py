"""The robustness flow: PLISM embedding stores of one or several models → tables, figures, one HTML report.

Each store holds one model's embeddings ``[condition, tile, feature]`` of an
aligned tile store (``python -m flows.embed`` on the output of
``flows.extract_plism``). Every pair of conditions is scored (cosine
similarity, top-k accuracy; :mod:`pipeline.robustness`), one task per model;
then the results are gathered into ``DIR``. Each store is reported under a
unique label (model name and weights checksum, or ``--label``), and all must
embed the same aligned tiles (:mod:`pipeline.robustness.inputs`).

- ``results.csv``: one row per model × group × metric (count, mean, std, median, IQR), and the
  summary score as group ``summary``, metric ``score``; ``results.md`` the same as a table;
- ``stores.csv``: each store's label, model, weights checksum, pooling, aligned plan and tile count;
- ``pairs/<label>.csv``: every pair; ``matrices/<label>-top_1_accuracy.csv``: condition × condition;
- ``figures/*.png``: per-group distributions (paper Figure 1), scanner vs staining (Figure 4), heat maps;
- ``index.html``: all of it, with the QC pictures of the registration and tiling stages when found.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pipeline.report.figures import group_distributions, heat_map, pair_matrix, scanner_vs_staining
from pipeline.report.html import Report
from pipeline.robustness import robustness_table, summarise, summary_score
from pipeline.robustness.inputs import (
    LEADERBOARD_POOLING,
    StoreIdentity,
    StoreMismatchError,
    assign_labels,
    check_same_tiles,
    file_name,
    pooling_warning,
    validated_subset,
)
from pipeline.robustness.pairs import DEFAULT_KS
from storage.embedding_store import open_embeddings

_HEAT_MAP_METRIC = "top_1_accuracy"


def _identity(store: str) -> StoreIdentity:
    """What the report needs of one store, from its recorded attributes."""
    data = open_embeddings(store)
    if "condition" not in data.dims:
        raise StoreMismatchError(
            f"{store} holds per-slide embeddings, not an aligned PLISM store [condition, tile, feature]"
        )
    attributes = data.attrs
    return StoreIdentity(
        path=str(store),
        model=str(attributes["model"]),
        weights_sha256=attributes.get("weights_sha256"),
        init_seed=attributes.get("init_seed"),
        pooling=str(attributes.get("pooling", "unrecorded")),
        dim=int(attributes["dim"]),
        plan_id=zarr.open_group(store, mode="r").attrs.get("source_stamp"),
        n_tiles=int(data.sizes["tile"]),
    )


def _load_subset(path: str, n_tiles: int) -> np.ndarray:
    """Tile indices from a ``.npy`` file: data only (no pickled objects), each a tile of the stores."""
    try:
        indices = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise StoreMismatchError(f"{path}: not a readable .npy array of tile indices ({error})") from error
    return validated_subset(indices, n_tiles, path)


def _stores_table(stores: dict[str, StoreIdentity]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "label": label,
                "model": s.model,
                "weights sha256": (s.weights_sha256 or "random")[:12],
                "pooling": s.pooling,
                "dim": s.dim,
                "aligned plan": s.plan_id,
                "tiles": s.n_tiles,
                "store": s.path,
            }
            for label, s in stores.items()
        ]
    ).set_index("label")


@task(name="score-model", task_run_name="score-{name}", cache_policy=None)
def score_model(name: str, store: str, ks: tuple[int, ...], subset: np.ndarray | None) -> pd.DataFrame:
    """Every pair of the store's complete conditions, scored."""
    data = open_embeddings(store)
    complete = data.complete.values
    table = {row["name"]: row for row in data.attrs.get("condition_table", [])} or None
    names = [str(n) for n in data.condition.values[complete]]
    rows = [(n, table[n]["staining"], table[n]["scanner"]) if table else (n, *n.split("_", 1)) for n in names]
    embeddings = data.embeddings.values[complete].astype(np.float32)
    pairs = robustness_table(embeddings, rows, ks=ks, subset=subset)
    pairs.insert(0, "model", name)
    return pairs


def _results(pairs_by_model: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per model × group × metric, plus each model's summary score."""
    frames = []
    for model, pairs in pairs_by_model.items():
        long = summarise(pairs.drop(columns="model")).stack().unstack("statistic").reset_index()
        long = long.rename(columns={"level_1": "metric"})
        long.insert(0, "model", model)
        frames.append(long)
        frames.append(
            pd.DataFrame(
                [
                    {
                        "model": model,
                        "group": "summary",
                        "metric": "score",
                        "count": len(pairs),
                        "mean": summary_score(pairs.drop(columns="model")),
                    }
                ]
            )
        )
    return pd.concat(frames, ignore_index=True)


def _qc_pictures(sources: list[Path], out: Path) -> list[Path]:
    """Copy the QC pictures of the given stores (registration, tiling) into ``out/qc``."""
    copied = []
    for source in sources:
        for picture in sorted((source / "qc").glob("*.png")) if source.is_dir() else []:
            target = out / "qc" / picture.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copyfile(picture, target)
                copied.append(target)
    return copied


@flow(name="robustness", log_prints=True)
def robustness(
    embeddings: list[str],
    out: str,
    ks: tuple[int, ...] = DEFAULT_KS,
    subset: str | None = None,
    qc_from: list[str] | None = None,
    labels: list[str] | None = None,
) -> dict:
    """Score each PLISM embedding store and write the report into ``out``; return ``{label: summary score}``.

    ``labels`` names the stores in the report (one each, in order); by default each is named by its
    model and weights checksum. The report shows the QC pictures of the aligned tile stores the
    embeddings come from, and of any other store in ``qc_from`` (a tile store, say).

    Raises
    ------
    StoreMismatchError
        Before anything is written, if two stores would share a label, the stores embed different
        aligned tiles, or the subset does not fit them.
    """
    logger = get_run_logger()
    stores = assign_labels([_identity(store) for store in embeddings], labels)
    check_same_tiles(stores)
    n_tiles = next(iter(stores.values())).n_tiles
    indices = _load_subset(subset, n_tiles) if subset else None
    warning = pooling_warning(stores)
    if warning:
        logger.warning(warning)
    folder = Path(out)
    for sub in ("pairs", "matrices", "figures"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    futures = {label: score_model.submit(label, s.path, tuple(ks), indices) for label, s in stores.items()}
    pairs_by_model = {name: future.result() for name, future in futures.items()}
    results = _results(pairs_by_model)
    results.to_csv(folder / "results.csv", index=False)
    scores = {
        m: float(results[(results.model == m) & (results.group == "summary")]["mean"].iloc[0]) for m in pairs_by_model
    }
    overview = _overview(pairs_by_model, scores)
    (folder / "results.md").write_text(overview.to_markdown(floatfmt=".4f") + "\n")
    figures = [
        group_distributions(
            pairs_by_model,
            ["cosine_similarity", f"top_{max(ks)}_accuracy"],
            folder / "figures" / "group-distributions.png",
        ),
        scanner_vs_staining(
            pairs_by_model,
            "top_1_accuracy" if 1 in ks else f"top_{min(ks)}_accuracy",
            folder / "figures" / "scanner-vs-staining.png",
        ),
    ]
    metric = _HEAT_MAP_METRIC if 1 in ks else f"top_{min(ks)}_accuracy"
    for model, pairs in pairs_by_model.items():
        pairs.to_csv(folder / "pairs" / f"{file_name(model)}.csv", index=False)
        matrix = pair_matrix(pairs, metric)
        matrix.to_csv(folder / "matrices" / f"{file_name(model)}-{metric}.csv")
        figures.append(
            heat_map(
                matrix, f"{model}: {metric.replace('_', ' ')}", folder / "figures" / f"heat-map-{file_name(model)}.png"
            )
        )
    report = Report("PLISM robustness")
    report.paragraph(
        f"{len(pairs_by_model)} model(s) over {n_tiles} aligned tiles"
        + (f"; tile subset {subset} ({len(indices)} tiles)" if indices is not None else "")
    )
    stores_table = _stores_table(stores)
    stores_table.to_csv(folder / "stores.csv")
    report.heading("Embedding stores")
    report.table(stores_table)
    if warning:
        report.paragraph(f"Warning: {warning}.")
    report.paragraph(
        f"Pooling: the PLISM leaderboard (owkin/plism-benchmark) embeds with the class token only "
        f"({LEADERBOARD_POOLING}); the H0-mini paper's HEST and EVA results use class token and mean patch "
        "token (cls+mean). Scores are comparable with the leaderboard only for stores pooled "
        f"{LEADERBOARD_POOLING}."
    )
    report.heading("How to read this report")
    report.paragraph(
        "Every PLISM condition (one staining on one scanner) is the same tissue, registered onto the reference, "
        "so tile i shows the same place in every condition. Each pair of conditions is scored on those tiles "
        "(paper §3.2.2): cosine similarity is the mean cosine between a tile's embedding in one condition and its "
        "embedding in the other (1 = identical); top-k accuracy is the share of tiles whose counterpart is among "
        "the k embeddings most similar to them, out of all tiles of both conditions (1 = always found)."
    )
    report.paragraph(
        "Pairs fall into groups: inter-scanner (same staining, two scanners: robustness to scanning), "
        "inter-staining (same scanner, two stainings: robustness to staining), inter-scanner, inter-staining "
        "(both differ) and all pairs. The score is the PLISM leaderboard's: the mean of four medians over pairs, "
        "the median cosine similarity over all pairs and the median top-10 accuracy of each of the three "
        "inter-groups (paper §3.2.2: metrics aggregated across combinations of distinct scanners and stainings)."
    )
    report.heading("Summary")
    report.paragraph(
        "One column per model, one row per median over the pairs of a group; score first. Higher is more robust."
    )
    report.table(overview.T)
    report.heading("Figures")
    report.pictures(figures, folder, captions=_captions(pairs_by_model, metric))
    report.heading("All statistics")
    report.paragraph(
        "Per model, group and metric: number of pairs, mean, standard deviation (population), "
        "median and inter-quartile range over the pairs; the summary row is the score above."
    )
    report.table(results)
    sources = [Path(str(open_embeddings(store).attrs.get("source", ""))) for store in embeddings]
    qc = _qc_pictures([*dict.fromkeys(sources), *map(Path, qc_from or [])], folder)
    if qc:
        report.heading("QC pictures of the registration and tiling stages")
        report.thumbnails(qc, folder)
    page = report.write(folder)
    create_markdown_artifact(
        overview.to_markdown(floatfmt=".4f"), key="robustness-summary", description=f"PLISM robustness report: {page}"
    )
    for model, score in scores.items():
        logger.info("%s: summary score %.4f", model, score)
    print(f"report: {page}")
    return scores


def _captions(pairs_by_model: dict[str, pd.DataFrame], metric: str) -> dict[str, str]:
    """What each figure shows, in a sentence, by file stem."""
    captions = {
        "group-distributions": "Distribution over pairs of each metric, by pair group (a box per model; "
        "boxes span the quartiles, the line is the median; paper Figure 1).",
        "scanner-vs-staining": "Median top-1 accuracy over inter-scanner pairs (x) against inter-staining "
        "pairs (y), one point per model; above the diagonal means more robust to "
        "staining than to scanning (paper Figure 4).",
    }
    for model in pairs_by_model:
        captions[f"heat-map-{file_name(model)}"] = (
            f"{model}: {metric.replace('_', ' ')} of every pair of conditions; the diagonal (a condition "
            "against itself) is not measured."
        )
    return captions


def _overview(pairs_by_model: dict[str, pd.DataFrame], scores: dict[str, float]) -> pd.DataFrame:
    """Model × (score, median cosine over all pairs, median top-k of each inter-group)."""
    rows = []
    for model, pairs in pairs_by_model.items():
        summary = summarise(pairs.drop(columns="model"))
        row = {"model": model, "score": scores[model]}
        for column in summary.columns:
            for group in summary.index.get_level_values("group").unique():
                row[f"{column} [{group}]"] = summary.loc[(group, "median"), column]
        rows.append(row)
    return pd.DataFrame(rows).set_index("model").sort_values("score", ascending=False)
