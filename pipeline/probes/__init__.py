"""Downstream probes of embeddings (issue 6): HEST-style ridge regression and a linear classifier.

Usable without Prefect::

    from pipeline.probes import ridge_regression_cv, linear_probe_cv
    ridge_regression_cv(X, Y, folds)   # one row per fold × metric (pearson, pearson:<target>)
    linear_probe_cv(X, y, folds)       # one row per fold (balanced_accuracy)

:func:`load_probe_inputs` joins a labels CSV to an embedding store; the
command line is ``python -m flows.evaluate``.
"""

from pipeline.probes.cv import (
    FoldError,
    hest_ridge_alpha,
    linear_probe_cv,
    linear_probe_pipeline,
    logistic_C,
    ridge_pipeline,
    ridge_regression_cv,
)
from pipeline.probes.inputs import LabelsError, ProbeInputs, ProbeSettings, load_probe_inputs, probe_inputs
from pipeline.probes.report import results_markdown, results_table, summarise

__all__ = [
    "FoldError",
    "LabelsError",
    "ProbeInputs",
    "ProbeSettings",
    "hest_ridge_alpha",
    "linear_probe_cv",
    "linear_probe_pipeline",
    "load_probe_inputs",
    "logistic_C",
    "probe_inputs",
    "results_markdown",
    "results_table",
    "ridge_pipeline",
    "ridge_regression_cv",
    "summarise",
]
