"""Which embedding stores a robustness report may compare, and under which names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from flows.robustness_flow import robustness
from pipeline.embed import EmbeddingSettings, prepared_store
from pipeline.robustness.inputs import (
    StoreIdentity,
    StoreMismatchError,
    assign_labels,
    check_same_tiles,
    pooling_warning,
    validated_subset,
)
from storage.aligned_store import AlignedTileStore
from storage.manifest import SlideRecord, write_record
from storage.tile_store import StoreError
from storage.tile_units import open_tile_source
from tests.flow_helpers import run_cli

CONDITIONS = [("GMH_S60", "GMH", "S60"), ("GMH_AT2", "GMH", "AT2"), ("HR_S60", "HR", "S60"), ("HR_AT2", "HR", "AT2")]
N_TILES = 32


def _identity(path="a", model="h0-mini", sha="aa" * 32, pooling="cls", plan="p1", n_tiles=N_TILES, seed=None):
    return StoreIdentity(path, model, sha, seed, pooling, 768, plan, n_tiles)


def test_two_checkpoints_of_one_model_get_two_labels() -> None:
    labels = assign_labels([_identity("x", sha="3f1c9a2b" + "0" * 56), _identity("y", sha="77" * 32)])
    assert list(labels) == ["h0-mini-3f1c9a2b", "h0-mini-77777777"]
    assert list(assign_labels([_identity(sha=None, seed=3)])) == ["h0-mini-random-seed3"]


def test_the_same_model_twice_is_refused_unless_labelled() -> None:
    twice = [_identity("run1/h0-mini.zarr"), _identity("run2/h0-mini.zarr")]
    with pytest.raises(StoreMismatchError, match="run1/h0-mini.zarr and run2/h0-mini.zarr .* --label"):
        assign_labels(twice)
    assert list(assign_labels(twice, ["before", "after"])) == ["before", "after"]
    with pytest.raises(StoreMismatchError, match="1 labels for 2"):
        assign_labels(twice, ["only-one"])
    with pytest.raises(StoreMismatchError, match="would both be reported"):
        assign_labels(twice, ["a b", "a-b"])  # one file name for both


def test_the_same_weights_pooled_two_ways_are_two_entries_and_a_warning() -> None:
    stores = assign_labels([_identity("c", pooling="cls"), _identity("m", pooling="cls+mean")])
    assert list(stores) == ["h0-mini-aaaaaaaa [cls]", "h0-mini-aaaaaaaa [cls+mean]"]
    assert "pooled differently" in pooling_warning(stores) and "--pooling cls" in pooling_warning(stores)
    assert pooling_warning(assign_labels([_identity()])) is None


def test_stores_of_different_tile_sets_are_refused() -> None:
    with pytest.raises(StoreMismatchError, match="different aligned tile sets.*plan p2, 32 tiles"):
        check_same_tiles(assign_labels([_identity("x"), _identity("y", sha="bb" * 32, plan="p2")]))
    with pytest.raises(StoreMismatchError, match="30 tiles"):
        check_same_tiles(assign_labels([_identity("x"), _identity("y", sha="bb" * 32, n_tiles=30)]))


@pytest.mark.parametrize(
    ("indices", "problem"),
    [
        (np.array([0, 32]), r"0\.\.31"),
        (np.array([-1, 2]), r"0\.\.31"),
        (np.array([0.5]), "integer"),
        (np.array([], dtype=int), "empty"),
        (np.array([1, 1]), "twice"),
    ],
)
def test_a_subset_that_does_not_fit_the_stores_is_refused(indices, problem) -> None:
    with pytest.raises(StoreMismatchError, match=problem):
        validated_subset(indices, N_TILES, "subset.npy")


def _aligned_store(root) -> AlignedTileStore:
    store = AlignedTileStore.create_or_open(root, {"test": True})
    table = [{"name": n, "staining": s, "scanner": m, "mpp_um": 0.5} for n, s, m in CONDITIONS]
    store.start_plan(
        table,
        {},
        np.zeros((4, N_TILES, 2)),
        np.ones((4, N_TILES)),
        np.zeros((N_TILES, 2), np.int32),
        tile_size_px=224,
        mpp_um=0.5,
        tiles_per_shard=16,
        jpeg_quality=90,
        jpeg_subsampling="444",
    )
    blank = np.full((16, 224, 224, 3), 200, np.uint8)
    for index, (name, _, _) in enumerate(CONDITIONS):
        for start in range(0, N_TILES, 16):
            store.write_condition_tiles(index, start, blank)
        write_record(store, SlideRecord(name, "", "extracted", extra={"plan_id": store.read_plan()["plan_id"]}))
    return store


def _embedding_store(out, aligned, weights, noise: float, pooling="cls+mean", seed=0) -> str:
    """An h0-mini embedding store of ``aligned`` with synthetic vectors: a tile's vector plus condition noise."""
    settings = EmbeddingSettings(
        model="h0-mini", weights=str(weights) if weights else None, pooling=pooling, dtype="float32"
    )
    source = open_tile_source(aligned)
    with prepared_store(out, settings, source) as store:
        pass
    dim = zarr.open_array(store.root / "embeddings", mode="r").shape[-1]
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(N_TILES, dim))
    for unit in source.units():
        condition = unit.position[0]
        rows = base[unit.start : unit.start + unit.count]
        store.write_unit(unit, rows + noise * condition * rng.normal(size=rows.shape))
    return str(store.root)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """The aligned store of four conditions: all the fast test needs, without the embedding stores below."""
    return _aligned_store(tmp_path_factory.mktemp("aligned") / "aligned.zarr").root


@pytest.fixture(scope="module")
def two_h0_mini_stores(tmp_path_factory, aligned):
    folder = tmp_path_factory.mktemp("h0-mini")
    first, second = folder / "first.safetensors", folder / "second.safetensors"
    first.write_bytes(b"checkpoint one")
    second.write_bytes(b"checkpoint two")
    return aligned, [
        _embedding_store(folder / "run1" / "h0-mini.zarr", aligned, first, 0.1),
        _embedding_store(folder / "run2" / "h0-mini.zarr", aligned, second, 3.0),
    ]


def test_two_h0_mini_stores_are_both_scored_under_their_own_labels(two_h0_mini_stores, tmp_path, prefect_api):
    _, stores = two_h0_mini_stores
    scores = robustness(embeddings=stores, out=str(tmp_path / "report"))
    assert len(scores) == 2 and all(label.startswith("h0-mini-") for label in scores)
    first, second = scores.values()
    assert first > second  # the first checkpoint's features move far less across conditions
    results = pd.read_csv(tmp_path / "report" / "results.csv")
    assert set(results.model) == set(scores)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "cls+mean" in page and "owkin/plism-benchmark" in page and stores[0] in page
    listed = pd.read_csv(tmp_path / "report" / "stores.csv")
    assert list(listed.label) == list(scores) and set(listed.pooling) == {"cls+mean"}


@pytest.mark.slow
def test_the_same_store_twice_or_other_tiles_exit_with_a_user_error(two_h0_mini_stores, tmp_path, prefect_api):
    aligned, stores = two_h0_mini_stores
    process = run_cli(
        "--embeddings",
        stores[0],
        stores[0],
        "--out",
        str(tmp_path / "twice"),
        api_url=prefect_api,
        module="flows.robustness",
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 2 and "--label" in output and "Traceback" not in output
    assert not (tmp_path / "twice").exists()  # refused before anything is written
    subset = tmp_path / "subset.npy"
    np.save(subset, np.arange(0, N_TILES + 8, 2))  # plismbench's indices, but for a larger tile set
    process = run_cli(
        "--embeddings",
        *stores,
        "--subset",
        str(subset),
        "--out",
        str(tmp_path / "subset"),
        api_url=prefect_api,
        module="flows.robustness",
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 2 and "must lie in 0..31" in output and "Traceback" not in output
    labelled = robustness(embeddings=[stores[0], stores[0]], out=str(tmp_path / "labelled"), labels=["a", "b"])
    assert list(labelled) == ["a", "b"]
    other = _aligned_store(tmp_path / "other-aligned.zarr")  # planned anew: another plan id
    elsewhere = _embedding_store(tmp_path / "elsewhere.zarr", other.root, None, 0.1)
    with pytest.raises(StoreMismatchError, match="different aligned tile sets"):
        robustness(embeddings=[stores[0], elsewhere], out=str(tmp_path / "mixed"))


def test_pooling_differences_are_warned_and_shown(two_h0_mini_stores, tmp_path, prefect_api, caplog):
    aligned, stores = two_h0_mini_stores
    class_token = _embedding_store(tmp_path / "cls.zarr", aligned, None, 0.1, pooling="cls")
    robustness(embeddings=[stores[0], class_token], out=str(tmp_path / "report"))
    assert "pooled differently" in caplog.text
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Warning: the stores were pooled differently" in page


def test_a_resumed_random_model_store_refuses_another_seed(aligned, tmp_path):
    _embedding_store(tmp_path / "random.zarr", aligned, None, 0.1)
    source = open_tile_source(aligned)
    with pytest.raises(StoreError, match="init_seed"):
        with prepared_store(
            tmp_path / "random.zarr", EmbeddingSettings(model="h0-mini", dtype="float32", init_seed=1), source
        ):
            pass
    stored = zarr.open_group(tmp_path / "random.zarr", mode="r").attrs["embedding"]
    assert stored["init_seed"] == 0 and stored["weights_sha256"] is None
