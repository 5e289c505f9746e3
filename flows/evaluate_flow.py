"""The evaluate flow: join labels to an embedding store, run the cross-validated probe, write the results.

Writes ``results.csv`` (one row per fold × metric, then ``mean`` and ``std``
rows), ``results.md`` and the same report as a Prefect markdown artifact.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from pipeline.probes import (
    ProbeSettings,
    linear_probe_cv,
    load_probe_inputs,
    results_markdown,
    results_table,
    ridge_regression_cv,
    summarise,
)

_PROTOCOL = {
    "regression": "standardise → PCA (≤ 256) → ridge, alpha = 100 / (components · targets) (HEST-Benchmark); "
    "Pearson per target, averaged",
    "classification": "standardise → logistic regression, L2 λ = 100 / (D · classes) on the mean loss (UNI), "
    "balanced class weights; balanced accuracy",
}


@flow(name="evaluate", log_prints=True)
def evaluate_embeddings(embeddings: str, labels: str, out: str, settings: ProbeSettings) -> dict[str, float]:
    """Probe the embeddings in ``embeddings`` against the table ``labels``; return each metric's mean over folds."""
    logger = get_run_logger()
    inputs = load_probe_inputs(embeddings, labels, settings)
    logger.info(
        "%d samples × %d features, %d target(s), %d folds",
        *inputs.features.shape,
        inputs.targets.shape[1],
        len(set(inputs.folds)),
    )
    if settings.task == "regression":
        results = ridge_regression_cv(inputs.features, inputs.targets, inputs.folds)
    else:
        results = linear_probe_cv(inputs.features, inputs.targets.iloc[:, 0], inputs.folds)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    results_table(results).to_csv(folder / "results.csv", index=False)
    context = {
        "embeddings": embeddings,
        "labels": labels,
        "level": settings.level,
        "samples": len(inputs.folds),
        "features": inputs.features.shape[1],
        "folds": f"column {settings.folds_column!r}, test on each, train on the others",
        "protocol": _PROTOCOL[settings.task],
    }
    markdown = results_markdown(results, f"{settings.task.capitalize()} probe", context)
    (folder / "results.md").write_text(markdown)
    create_markdown_artifact(markdown, key="evaluate-results", description=f"{settings.task} probe of {embeddings}")
    means = {metric: float(mean) for metric, mean in summarise(results)[["metric", "mean"]].itertuples(index=False)}
    headline = "pearson" if settings.task == "regression" else "balanced_accuracy"
    print(f"{headline} {means[headline]:.4f} (mean over folds); results in {folder}")
    return means
