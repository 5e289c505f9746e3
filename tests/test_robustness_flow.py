"""The robustness command end to end: two models' PLISM embedding stores → results table, figures, HTML."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pandas as pd
import pytest
import zarr
from prefect.task_runners import ThreadPoolTaskRunner

from flows.embedding_flow import embed_tiles
from pipeline.embed import EmbeddingSettings
from storage.aligned_store import AlignedTileStore
from storage.manifest import SlideRecord, write_record
from tests.browser import chromium, screenshot_and_measure
from tests.flow_helpers import run_cli

CONDITIONS = [("GMH_S60", "GMH", "S60"), ("GMH_AT2", "GMH", "AT2"), ("HR_S60", "HR", "S60"), ("HR_AT2", "HR", "AT2")]


@pytest.fixture(scope="module")
def embedding_stores(tmp_path_factory, shipped_tile_store, prefect_api):
    """The shipped CMU tiles as four conditions (darker stain for HR, a colder scanner for AT2), embedded
    by two tiny random models.
    """
    folder = tmp_path_factory.mktemp("robustness")
    tiles = zarr.open_array(shipped_tile_store / "slides" / "CMU-1-Small-Region" / "tiles", mode="r")[:48]
    store = AlignedTileStore.create_or_open(folder / "aligned.zarr", {"test": True})
    table = [{"name": n, "staining": s, "scanner": m, "mpp_um": 0.5} for n, s, m in CONDITIONS]
    store.start_plan(
        table,
        {},
        np.zeros((4, 48, 2)),
        np.ones((4, 48)),
        np.zeros((48, 2), np.int32),
        tile_size_px=224,
        mpp_um=0.5,
        tiles_per_shard=16,
        jpeg_quality=90,
        jpeg_subsampling="444",
    )
    for index, (name, staining, scanner) in enumerate(CONDITIONS):
        shifted = tiles.astype(np.float32) * (0.85 if staining == "HR" else 1.0)
        shifted[..., 2] += 12 if scanner == "AT2" else 0
        converted = np.clip(shifted, 0, 255).astype(np.uint8)
        for start in range(0, 48, 16):
            store.write_condition_tiles(index, start, converted[start : start + 16])
        write_record(store, SlideRecord(name, "", "extracted", extra={"plan_id": store.read_plan()["plan_id"]}))
    (store.qc_dir / "GMH_AT2.png").write_bytes(imagecodecs.png_encode(tiles[0]))  # a registration picture
    outputs = []
    for model in ("tiny-student", "tiny-teacher"):
        out = folder / f"{model}.zarr"
        settings = EmbeddingSettings(model=model, batch_size=16, loader_workers=0)
        embed_tiles.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(
            tiles=str(store.root), out=str(out), settings=settings
        )
        outputs.append(out)
    return outputs


def test_two_models_give_a_table_figures_and_a_report(embedding_stores, tmp_path, prefect_api):
    out = tmp_path / "report"
    subset = tmp_path / "subset.npy"
    np.save(subset, np.arange(0, 48, 2))
    process = run_cli(
        "--embeddings",
        *map(str, embedding_stores),
        "--out",
        str(out),
        "--subset",
        str(subset),
        api_url=prefect_api,
        module="flows.robustness",
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    results = pd.read_csv(out / "results.csv")
    assert set(results.model) == {"tiny-student-random-seed0", "tiny-teacher-random-seed0"}
    assert set(results.group) == {"inter-scanner", "inter-staining", "inter-scanner, inter-staining", "all", "summary"}
    pairs = results[(results.group == "all") & (results.metric == "cosine_similarity")]
    assert list(pairs["count"]) == [6, 6]  # 4 conditions: 6 pairs per model
    scores = results[results.group == "summary"]["mean"]
    assert scores.between(0, 1).all()
    for name in ("group-distributions.png", "scanner-vs-staining.png", "heat-map-tiny-student-random-seed0.png"):
        assert (out / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "index.html").read_text()
    assert "figures/heat-map-tiny-teacher-random-seed0.png" in page and "qc/GMH_AT2.png" in page
    matrix = pd.read_csv(out / "matrices" / "tiny-student-random-seed0-top_1_accuracy.csv", index_col=0)
    assert matrix.shape == (4, 4) and np.allclose(matrix.values, matrix.values.T, equal_nan=True)
    assert np.isnan(np.diag(matrix.values)).all()  # a condition against itself is not measured
    assert "tiny-student-random-seed0" in (out / "results.md").read_text()
    assert "§3.2.2" in page and "mean of four medians" in page
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium to render the report")
    measured = screenshot_and_measure(browser, out / "index.html", tmp_path / "report.png")
    assert measured["scroll_width"] <= 1280  # no horizontal overflow at a 1,280-px window
    assert measured["images"] >= 5 and measured["images_loaded"] == measured["images"]
    assert measured["smallest_image_scale"] >= 0.99  # figures shown at their natural size (11 pt = 15 px)


def test_per_slide_embeddings_are_refused_clearly(shipped_tile_store, tmp_path, prefect_api):
    out = tmp_path / "emb.zarr"
    embed_tiles.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(
        tiles=str(shipped_tile_store), out=str(out), settings=EmbeddingSettings(model="tiny-student", loader_workers=0)
    )
    process = run_cli(
        "--embeddings", str(out), "--out", str(tmp_path / "report"), api_url=prefect_api, module="flows.robustness"
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 2 and "not an aligned PLISM store" in output
