"""Batch embedding of tile stores: values, layout, resume, aligned stores, several processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from prefect.task_runners import ThreadPoolTaskRunner

from flows.embedding_flow import embed_tiles
from flows.tiling_flow import tile_tcga
from pipeline.embed import EmbeddingSettings
from pipeline.models import build_model, embed
from storage.aligned_store import AlignedTileStore
from storage.embedding_store import open_embeddings
from storage.read import open_slide_group
from tests.flow_helpers import run_cli
from tiling.config import TilingConfig

SHARD = 16  # small shards, so a slide has several units


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny student with fixed random weights, so the job and the direct call use the same model."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny-student.safetensors"
    save_file(build_model("tiny-student").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tile_store(tmp_path_factory, prefect_api):
    from tests.conftest import CMU_SVS, OME_TIFF

    folder = tmp_path_factory.mktemp("slides")
    for source in (CMU_SVS, OME_TIFF):
        (folder / source.name).symlink_to(source)
    out = tmp_path_factory.mktemp("tiles") / "tiles.zarr"
    tile_tcga.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(
        slides=str(folder),
        out=str(out),
        config=TilingConfig(tiles_per_shard=SHARD),
    )
    return out


def _settings(weights, **changes) -> EmbeddingSettings:
    return EmbeddingSettings(
        **{"model": "tiny-student", "weights": str(weights), "batch_size": 7, "loader_workers": 0, **changes}
    )


def _run(tiles, out, settings, partitions=1):
    return embed_tiles.with_options(task_runner=ThreadPoolTaskRunner(max_workers=partitions))(
        tiles=str(tiles),
        out=str(out),
        settings=settings,
        partitions=partitions,
    )


def _direct(weights, tiles: np.ndarray) -> np.ndarray:
    model = build_model("tiny-student", str(weights)).eval()
    with torch.inference_mode():
        return embed(model, torch.from_numpy(tiles)).numpy()


@pytest.mark.slow
def test_embeddings_mirror_the_tile_store_and_equal_a_direct_model_call(tile_store, weights, tmp_path):
    out = tmp_path / "emb.zarr"
    summary = _run(tile_store, out, _settings(weights, loader_workers=2))
    data = open_embeddings(out)
    assert list(data.slide.values) == ["CMU-1-Small-Region", "OS-1-detail"]
    model = build_model("tiny-student", device="meta")
    assert data.embeddings.shape[1] == 2 * model.embed_dim
    assert data.attrs["model"] == "tiny-student" and len(data.attrs["weights_sha256"]) == 64
    assert data.embeddings.dtype == np.float16
    for index, slide_id in enumerate(data.slide.values):
        source = open_slide_group(tile_store, slide_id)
        rows = (data.slide_index == index).values
        np.testing.assert_array_equal(data["coords"].values[rows], source["coords"][...])
        expected = _direct(weights, source["tiles"][...])
        np.testing.assert_allclose(data.embeddings.values[rows].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert summary["tiles"] == data.sizes["tile"] > 2 * SHARD


@pytest.mark.slow
def test_an_interrupted_job_resumes_to_identical_output_and_a_finished_one_does_nothing(tile_store, weights, tmp_path):
    out = tmp_path / "emb.zarr"
    _run(tile_store, out, _settings(weights))
    expected = open_embeddings(out).embeddings.values
    chunk = out / "slides" / "CMU-1-Small-Region" / "embeddings" / "c" / "1" / "0"
    # Killed while writing shard 1: its chunk half written, its marker never made; shard 2 not started.
    chunk.write_bytes(chunk.read_bytes()[:100])
    for key in ("CMU-1-Small-Region.1", "CMU-1-Small-Region.2"):
        (out / "done" / key).unlink()
    resumed = _run(tile_store, out, _settings(weights))
    assert resumed["embedded_now"] == 2
    np.testing.assert_array_equal(open_embeddings(out).embeddings.values, expected)
    stamp = chunk.stat().st_mtime_ns
    again = _run(tile_store, out, _settings(weights))
    assert again["embedded_now"] == 0 and again["tiles"] == 0
    assert chunk.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_other_settings_are_refused_on_an_existing_store(tile_store, weights, tmp_path):
    from storage.tile_store import StoreError

    out = tmp_path / "emb.zarr"
    _run(tile_store, out, _settings(weights))
    with pytest.raises(StoreError, match="other embedding parameters.*pooling"):
        _run(tile_store, out, _settings(weights, pooling="cls"))


def test_an_aligned_store_gives_condition_by_tile_embeddings(weights, tmp_path, prefect_api):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (3, 20, 224, 224, 3), dtype=np.uint8)
    store = AlignedTileStore.create_or_open(tmp_path / "aligned.zarr", {"test": True})
    table = [
        {"name": n, "staining": n.split("_")[0], "scanner": n.split("_")[1], "mpp_um": 0.5}
        for n in ("GMH_S60", "GIVH_S60", "HR_S60")
    ]
    store.start_plan(
        table,
        {},
        np.zeros((3, 20, 2)),
        np.ones((3, 20)),
        np.zeros((20, 2), np.int32),
        tile_size_px=224,
        mpp_um=0.5,
        tiles_per_shard=8,
        jpeg_quality=90,
        jpeg_subsampling="444",
    )
    from storage.manifest import SlideRecord, write_record

    for condition in (0, 2):  # HR_S60's tiles never finished: it is not embedded
        for start in range(0, 20, 8):
            store.write_condition_tiles(condition, start, tiles[condition, start : start + 8])
        write_record(
            store,
            SlideRecord(table[condition]["name"], "", "extracted", extra={"plan_id": store.read_plan()["plan_id"]}),
        )
    out = tmp_path / "emb.zarr"
    _run(store.root, out, _settings(weights))
    data = open_embeddings(out)
    assert data.embeddings.shape == (3, 20, data.attrs["dim"])
    assert list(data.complete.values) == [True, False, True]
    stored = zarr.open_array(store.root / "tiles", mode="r")[2]
    np.testing.assert_allclose(
        data.embeddings.values[2].astype(np.float32), _direct(weights, stored), atol=2e-3, rtol=2e-3
    )


def test_cli_splits_the_shards_over_two_dask_processes_each_with_a_reader_process(
    tile_store, weights, tmp_path, prefect_api
):
    out = tmp_path / "emb.zarr"
    process = run_cli(
        "--tiles",
        str(tile_store),
        "--out",
        str(out),
        "--model",
        "tiny-student",
        "--weights",
        str(weights),
        "--device",
        "cpu",
        "--partitions",
        "2",
        "--loader-workers",
        "1",
        api_url=prefect_api,
        module="flows.embed",
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    data = open_embeddings(out)
    reference = tmp_path / "one.zarr"
    _run(tile_store, reference, _settings(weights, batch_size=32))
    np.testing.assert_allclose(
        data.embeddings.values.astype(np.float32),
        open_embeddings(reference).embeddings.values.astype(np.float32),
        atol=2e-3,
    )
    assert "embedded" in output


def test_a_weights_file_that_does_not_fit_fails_the_command_clearly(tile_store, tmp_path, prefect_api):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"not_a_vit.weight": torch.zeros(3)}, bad)
    process = run_cli(
        "--tiles",
        str(tile_store),
        "--out",
        str(tmp_path / "emb.zarr"),
        "--model",
        "tiny-student",
        "--weights",
        str(bad),
        api_url=prefect_api,
        module="flows.embed",
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 2, output
    assert "bad.safetensors" in output and "not_a_vit.weight" in output
