"""Downstream probes: HEST ridge and linear classifier on synthetic data, the labels join, the command line."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline.probes import (
    FoldError,
    LabelsError,
    ProbeSettings,
    hest_ridge_alpha,
    linear_probe_cv,
    probe_inputs,
    results_table,
    ridge_pipeline,
    ridge_regression_cv,
)
from storage.lazy_arrays import tile_coordinates
from tests.flow_helpers import run_cli

FOLDS = np.repeat(["a", "b", "c"], 80)


@pytest.fixture(autouse=True)
def one_blas_thread():
    """These matrices are tiny: BLAS threads would only fight the other test workers for the cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _pearson(results: pd.DataFrame) -> np.ndarray:
    return results.loc[results.metric == "pearson", "value"].to_numpy()


def test_ridge_finds_a_linear_signal_and_nothing_in_noise(rng):
    X = rng.normal(size=(240, 48))
    Y = X @ rng.normal(size=(48, 4)) + rng.normal(scale=2.0, size=(240, 4))
    signal = ridge_regression_cv(X, pd.DataFrame(Y, columns=["A", "B", "C", "D"]), FOLDS)
    assert list(signal.fold.unique()) == ["a", "b", "c"]
    assert set(signal.metric) == {"pearson", "pearson:A", "pearson:B", "pearson:C", "pearson:D"}
    assert (_pearson(signal) > 0.9).all()
    noise = ridge_regression_cv(X, rng.normal(size=(240, 4)), FOLDS)
    assert abs(_pearson(noise).mean()) < 0.1


def test_hest_alpha_counts_pca_components_not_embedding_width(rng):
    assert hest_ridge_alpha(256, 50) == pytest.approx(100 / (256 * 50))
    assert ridge_pipeline(n_train=5000, n_features=1536, n_targets=50)["ridge"].alpha == pytest.approx(100 / 12800)
    small = ridge_pipeline(n_train=40, n_features=1536, n_targets=2)  # PCA cannot exceed the training samples
    assert small["pca"].n_components == 40 and small["ridge"].alpha == pytest.approx(100 / 80)
    results = ridge_regression_cv(rng.normal(size=(240, 300)), rng.normal(size=(240, 3)), FOLDS)
    assert (results.n_components == 160).all() and np.allclose(results.alpha, 100 / (160 * 3))


def test_linear_probe_separates_classes_and_random_labels_score_chance(rng):
    y = rng.integers(0, 3, 240)
    X = rng.normal(size=(240, 32)) + 3 * rng.normal(size=(3, 32))[y]
    separable = linear_probe_cv(X, y, FOLDS)
    assert list(separable.metric) == ["balanced_accuracy"] * 3 and (separable.value > 0.95).all()
    random = linear_probe_cv(X, rng.integers(0, 3, 240), FOLDS)
    assert abs(random.value.mean() - 1 / 3) < 0.1


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_a_test_fold_never_trains_its_own_model(rng):
    # Fold "c" alone holds class 2: had its samples leaked into training, its cluster would be learnt.
    y = np.where(FOLDS == "c", 2, rng.integers(0, 2, 240))
    X = rng.normal(size=(240, 16)) + 4 * rng.normal(size=(3, 16))[y]
    results = linear_probe_cv(X, y, FOLDS).set_index("fold")
    assert results.value["c"] == 0.0 and (results.value[["a", "b"]] > 0.95).all()
    assert (results.n_train + results.n_test == 240).all() and results.n_test["c"] == 80
    with pytest.raises(FoldError, match="at least 2 folds"):
        ridge_regression_cv(X, y, np.zeros(240))


def _dataset(rng) -> xr.Dataset:
    """Two slides as :func:`storage.embedding_store.open_embeddings` gives them: 3 tiles, then 2."""
    embeddings = rng.normal(size=(5, 4)).astype(np.float16)
    coords = np.array([[0, 0], [224, 0], [0, 224], [0, 0], [448, 448]])
    return xr.Dataset(
        {
            "embeddings": (("tile", "feature"), da.from_array(embeddings, chunks=2)),
            "coords": (("tile", "xy"), da.from_array(coords)),
        },
        coords={**tile_coordinates(["s1", "s2"], [3, 2]), "xy": ["x", "y"]},
    )


def test_labels_join_by_slide_tile_index_or_coordinates(rng):
    data = _dataset(rng)
    stored = data.embeddings.values.astype(np.float32)
    slides = probe_inputs(
        data,
        pd.DataFrame({"slide_id": ["s2", "s1"], "fold": [0, 1], "score": [1.0, 2.0]}),
        ProbeSettings(level="slide"),
    )
    np.testing.assert_allclose(slides.features, [stored[3:].mean(0), stored[:3].mean(0)], rtol=1e-6)
    assert list(slides.targets.columns) == ["score"] and list(slides.folds) == [0, 1]
    tiles = pd.DataFrame(
        {"slide_id": ["s2", "s1"], "tile": [1, 2], "x": [448, 0], "y": [448, 224], "fold": [0, 1], "label": ["t", "n"]}
    )
    settings = ProbeSettings(task="classification", level="tile")
    by_index = probe_inputs(data, tiles, settings)
    by_xy = probe_inputs(data, tiles.drop(columns="tile"), settings)
    np.testing.assert_array_equal(by_index.features, stored[[4, 2]])
    np.testing.assert_array_equal(by_xy.features, stored[[4, 2]])


@pytest.mark.parametrize(
    ("table", "level", "message"),
    [
        ({"slide_id": ["s1", "x9", "x8"], "fold": [0, 1, 1], "v": [1.0, 2, 3]}, "slide", "2 slide_id.*x8, x9"),
        ({"slide_id": ["s1", "s1"], "fold": [0, 1], "v": [1.0, 2]}, "slide", "repeated slide_id.*--level tile"),
        ({"slide_id": ["s1", "s2"], "tile": [0, 2], "fold": [0, 1], "v": [1.0, 2]}, "tile", "outside.*s2/2"),
        ({"slide_id": ["s1", "s2"], "x": [0, 1], "y": [0, 0], "fold": [0, 1], "v": [1.0, 2]}, "tile", r"s2@\(1,0\)"),
        ({"slide_id": ["s1", "s2"], "fold": [0, 1], "v": ["a", "b"]}, "slide", "must be numeric"),
        ({"slide_id": ["s1", "s2"], "v": [1.0, 2]}, "slide", "no column 'fold'"),
    ],
)
def test_labels_that_do_not_fit_are_refused_by_name(rng, table, level, message):
    with pytest.raises(LabelsError, match=message):
        probe_inputs(_dataset(rng), pd.DataFrame(table), ProbeSettings(level=level), source="labels.csv")


def test_results_table_adds_mean_and_std_rows(rng):
    results = ridge_regression_cv(rng.normal(size=(240, 8)), rng.normal(size=(240, 2)), FOLDS)
    table = results_table(results)
    summary = table[table.fold.isin(["mean", "std"])].set_index(["fold", "metric"]).value
    assert len(table) == 3 * 3 + 2 * 3
    assert summary["mean", "pearson"] == pytest.approx(_pearson(results).mean())
    assert summary["std", "pearson"] == pytest.approx(_pearson(results).std())


@pytest.fixture(scope="module")
def embedding_store(tmp_path_factory, prefect_api):
    """The two shipped slides (50 + 3 tiles) tiled and embedded by a tiny student with random weights."""
    import torch
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.embedding_flow import embed_tiles
    from flows.tiling_flow import tile_tcga
    from pipeline.embed import EmbeddingSettings
    from tests.conftest import CMU_SVS, OME_TIFF
    from tiling.config import TilingConfig

    root = tmp_path_factory.mktemp("probes")
    (root / "slides").mkdir()
    for source in (CMU_SVS, OME_TIFF):
        (root / "slides" / source.name).symlink_to(source)
    runner = ThreadPoolTaskRunner(max_workers=1)
    torch.manual_seed(0)  # the random weights of the in-process model, so that every run sees the same embeddings
    tile_tcga.with_options(task_runner=runner)(
        slides=str(root / "slides"), out=str(root / "tiles.zarr"), config=TilingConfig()
    )
    embed_tiles.with_options(task_runner=runner)(
        tiles=str(root / "tiles.zarr"),
        out=str(root / "emb.zarr"),
        settings=EmbeddingSettings(model="tiny-student", batch_size=32, loader_workers=0),
    )
    return root / "emb.zarr"


def test_the_command_line_probes_tiles_of_a_real_store(embedding_store, tmp_path, prefect_api, rng, capsys):
    from flows.evaluate import main
    from storage.embedding_store import open_embeddings

    data = open_embeddings(embedding_store)
    slide_ids = data.slide_id.values
    tile = np.concatenate([np.arange(n) for n in np.bincount(data.slide_index.values)])
    X = data.embeddings.values.astype(np.float64)
    signal = (X - X.mean(0)) / (X.std(0) + 1e-6) @ rng.normal(size=X.shape[1])
    labels = pd.DataFrame(
        {
            "slide_id": slide_ids,
            "tile": tile,
            "fold": tile % 3,
            "signal": signal + rng.normal(scale=signal.std() / 3, size=len(signal)),
            "noise": rng.normal(size=len(signal)),
        }
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "results"
    process = run_cli(
        "--embeddings",
        str(embedding_store),
        "--labels",
        str(tmp_path / "labels.csv"),
        "--task",
        "regression",
        "--level",
        "tile",
        "--out",
        str(out),
        api_url=prefect_api,
        module="flows.evaluate",
    )
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    results = pd.read_csv(out / "results.csv").set_index(["fold", "metric"]).value
    assert results["mean", "pearson:signal"] > 0.8 and abs(results["mean", "pearson:noise"]) < 0.3
    assert {"0", "1", "2", "mean", "std"} == set(results.index.get_level_values("fold"))
    assert "pearson:signal" in (out / "results.md").read_text()

    labels.loc[0, "slide_id"] = "not-a-slide"
    labels.to_csv(tmp_path / "unknown.csv", index=False)
    code = main(
        [
            "--embeddings",
            str(embedding_store),
            "--labels",
            str(tmp_path / "unknown.csv"),
            "--task",
            "regression",
            "--level",
            "tile",
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "not-a-slide" in capsys.readouterr().err


def test_the_flow_classifies_slides_of_origin_and_records_an_artifact(embedding_store, tmp_path, prefect_api):
    from prefect.artifacts import Artifact

    from flows.evaluate_flow import evaluate_embeddings
    from storage.embedding_store import open_embeddings

    data = open_embeddings(embedding_store)
    index = data.slide_index.values
    tile = np.concatenate([np.arange(n) for n in np.bincount(index)])
    labels = pd.DataFrame(
        {"slide_id": data.slide_id.values, "tile": tile, "fold": tile % 2, "origin": data.slide_id.values}
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    means = evaluate_embeddings(
        str(embedding_store),
        str(tmp_path / "labels.csv"),
        str(tmp_path / "out"),
        ProbeSettings(task="classification", level="tile"),
    )
    assert means["balanced_accuracy"] > 0.9
    assert "balanced_accuracy" in Artifact.get("evaluate-results").data
