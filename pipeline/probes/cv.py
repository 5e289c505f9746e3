"""Cross-validated linear probes over user-given folds, built from scikit-learn pipelines.

Both probes refit everything (scaler, PCA, model) on the training folds only,
once per held-out fold, so no statistic of a test sample leaks into its model.
Regularisation scales with the problem size instead of being tuned, as in the
benchmarks the paper follows (§3.2.1), so that every model is probed alike:

- **Ridge (HEST-Benchmark)**: standardise, PCA to 256 components, ridge with
  ``alpha = 100 / (n_components · n_targets)``; the metric is the Pearson
  correlation of each target on the held-out fold, averaged over targets.
  Targets are used as given (HEST log1p-normalises expression beforehand).
- **Logistic regression (UNI's linear probe)**: standardise, L2 logistic
  regression with penalty ``100 / (D · n_classes)`` on the mean cross-entropy;
  the metric is balanced accuracy on the held-out fold.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

PCA_COMPONENTS = 256  # HEST-Benchmark's latent_dim, used by the paper (§3.2.1)
MAX_ITER = 1000  # as HEST's ridge and UNI's logistic regression


class FoldError(ValueError):
    """Folds that cannot give a train/test split (one fold only, a training set without two classes, ...)."""


def hest_ridge_alpha(n_features: int, n_targets: int) -> float:
    """HEST-Benchmark's ridge penalty ``100 / (n_features · n_targets)``.

    From mahmoodlab/HEST ``src/hest/bench/trainer.py`` (``train_test_reg``):
    ``alpha = 100 / (X_train.shape[1] * y_train.shape[1])``. There ``X_train``
    has already been through ``StandardScaler`` and ``PCA(256)``
    (``benchmark.py``), so ``n_features`` is the number of PCA components
    (256), not the embedding width.
    """
    return 100.0 / (n_features * n_targets)


def ridge_pipeline(n_train: int, n_features: int, n_targets: int, seed: int = 0) -> Pipeline:
    """Standardise → PCA (256, or fewer when the training set or the embedding is smaller) → ridge.

    HEST fits ``Ridge(fit_intercept=False, solver="lsqr")``; PCA outputs are
    centred on the training set, so an intercept changes only the mean of the
    predictions (which Pearson ignores) and the exact solver gives the
    solution lsqr approaches.
    """
    n_components = min(PCA_COMPONENTS, n_train, n_features)
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("pca", PCA(n_components=n_components, random_state=seed)),
            ("ridge", Ridge(alpha=hest_ridge_alpha(n_components, n_targets), max_iter=MAX_ITER)),
        ]
    )


def logistic_C(n_train: int, n_features: int, n_classes: int) -> float:
    """scikit-learn's ``C`` for UNI's linear-probe penalty ``λ = 100 / (D · n_classes)``.

    UNI (mahmoodlab/UNI ``eval_patch_features/linear_probe.py``) minimises the
    mean cross-entropy plus ``λ``·(weight norm) with ``C = D · n_classes / 100``;
    scikit-learn minimises ``C_sk`` · (summed cross-entropy) + ½‖W‖², so the
    same ``λ`` on the mean loss is ``C_sk = 1 / (λ · n_train)``. Wide embeddings
    and many classes get less regularisation, large training sets more.
    """
    return n_features * n_classes / (100.0 * n_train)


def linear_probe_pipeline(n_train: int, n_features: int, n_classes: int) -> Pipeline:
    """Standardise → L2 logistic regression, classes weighted inversely to their frequency.

    Class weights match the metric (balanced accuracy), so a probe cannot
    score by predicting the majority class of an imbalanced slide cohort.
    """
    return Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "logreg",
                LogisticRegression(
                    C=logistic_C(n_train, n_features, n_classes), class_weight="balanced", max_iter=MAX_ITER
                ),
            ),
        ]
    )


def pearson_per_target(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column ``[sample, target] → [target]``; NaN where a column is constant."""
    true, pred = y_true - y_true.mean(axis=0), y_pred - y_pred.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (true * pred).sum(axis=0) / np.sqrt((true**2).sum(axis=0) * (pred**2).sum(axis=0))


def fold_splits(folds: ArrayLike) -> Iterator[tuple[object, np.ndarray, np.ndarray]]:
    """``(fold, train mask, test mask)`` per distinct fold value, sorted: test on that fold, train on the rest."""
    fold_of = pd.Series(np.asarray(folds))
    if fold_of.isna().any():
        raise FoldError(f"{int(fold_of.isna().sum())} samples have no fold")
    values = sorted(fold_of.unique(), key=lambda v: (str(type(v)), v))
    if len(values) < 2:
        raise FoldError(f"cross-validation needs at least 2 folds, got {values}")
    for value in values:
        test = (fold_of == value).to_numpy()
        yield value, ~test, test


def ridge_regression_cv(X: np.ndarray, Y: np.ndarray | pd.DataFrame, folds: ArrayLike, seed: int = 0) -> pd.DataFrame:
    """HEST-style ridge probe of ``Y [sample, target]`` from ``X [sample, feature]``, one model per held-out fold.

    Returns one row per fold × metric: ``pearson`` (mean over targets, NaN
    targets skipped: HEST's headline number) and ``pearson:<target>`` for each
    target, with ``n_train``, ``n_test``, ``n_components`` and ``alpha``.
    Target names are ``Y``'s columns when it is a DataFrame, else ``0, 1, …``.
    """
    names = [str(c) for c in Y.columns] if isinstance(Y, pd.DataFrame) else None
    X, Y = np.asarray(X, dtype=np.float32), np.asarray(Y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    names = names or [str(i) for i in range(Y.shape[1])]
    rows = []
    for fold, train, test in fold_splits(folds):
        model = ridge_pipeline(int(train.sum()), X.shape[1], Y.shape[1], seed).fit(X[train], Y[train])
        r = pearson_per_target(Y[test], model.predict(X[test]).reshape(-1, Y.shape[1]))
        common = {
            "fold": fold,
            "n_train": int(train.sum()),
            "n_test": int(test.sum()),
            "n_components": model["pca"].n_components,
            "alpha": model["ridge"].alpha,
        }
        mean = float(np.nanmean(r)) if np.isfinite(r).any() else np.nan
        rows.append({**common, "metric": "pearson", "value": mean})
        rows += [{**common, "metric": f"pearson:{name}", "value": float(v)} for name, v in zip(names, r)]
    return _ordered(rows)


def linear_probe_cv(X: np.ndarray, y: ArrayLike, folds: ArrayLike) -> pd.DataFrame:
    """Logistic-regression probe of labels ``y [sample]`` from ``X [sample, feature]``, one model per held-out fold.

    Returns one row per fold: metric ``balanced_accuracy`` with ``n_train``,
    ``n_test`` and the ``C`` used. Chance level is ``1 / n_classes``.
    """
    X, labels = np.asarray(X, dtype=np.float32), np.asarray(y)
    rows = []
    for fold, train, test in fold_splits(folds):
        n_classes = len(np.unique(labels[train]))
        if n_classes < 2:
            raise FoldError(f"training on every fold but {fold!r} leaves one class only ({labels[train][0]!r})")
        model = linear_probe_pipeline(int(train.sum()), X.shape[1], n_classes).fit(X[train], labels[train])
        rows.append(
            {
                "fold": fold,
                "metric": "balanced_accuracy",
                "value": float(balanced_accuracy_score(labels[test], model.predict(X[test]))),
                "n_train": int(train.sum()),
                "n_test": int(test.sum()),
                "C": model["logreg"].C,
            }
        )
    return _ordered(rows)


def _ordered(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    first = ["fold", "metric", "value"]
    return frame[first + [c for c in frame.columns if c not in first]]
