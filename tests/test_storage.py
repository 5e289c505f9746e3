"""The store reads back through zarr, xarray/dask and the random-access reader, from any process."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import zarr

from storage.jpeg_codec import JpegCodec
from storage.read import TileReader, open_slide_group, open_tiles
from storage.tile_store import StoreError, TileStore
from tests.conftest import CMU_SVS, OME_TIFF
from tiling.config import TilingConfig
from tiling.slide_list import SlideSpec
from tiling.tile_slide import tile_slide


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> TileStore:
    config = TilingConfig(tiles_per_shard=16)
    store = TileStore.create_or_open(tmp_path_factory.mktemp("store") / "tiles.zarr", config.model_dump())
    for path, slide_id in ((CMU_SVS, "cmu"), (OME_TIFF, "ome")):
        assert tile_slide(SlideSpec(path, slide_id), store, config).status == "done"
    return store


def test_tiles_are_sharded_jpeg_with_one_tile_per_chunk(store):
    tiles = open_slide_group(store, "cmu")["tiles"]
    assert tiles.chunks == (1, 224, 224, 3) and tiles.shards == (16, 224, 224, 3)
    shard_files = list((store.slide_path("cmu") / "tiles" / "c").iterdir())
    assert len(shard_files) == -(-tiles.shape[0] // 16)


@pytest.mark.slow
def test_a_fresh_process_decodes_tiles_through_the_entry_point(store):
    """No distillpath import: zarr must find the codec by itself (else Dask workers hang)."""
    code = (
        "import sys, zarr; assert 'storage.jpeg_codec' not in sys.modules; "
        "a = zarr.open_array(sys.argv[1], mode='r'); assert 'storage.jpeg_codec' in sys.modules; print(a[3].mean())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(store.slide_path("cmu") / "tiles")],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(open_slide_group(store, "cmu")["tiles"][3].mean())


def test_open_tiles_concatenates_slides_lazily_in_shard_chunks(store):
    dataset = open_tiles(store)
    cmu, ome = (open_slide_group(store, s) for s in ("cmu", "ome"))
    n_cmu, n_ome = cmu["tiles"].shape[0], ome["tiles"].shape[0]
    assert dataset.sizes["tile"] == n_cmu + n_ome
    assert list(dataset["slide_id"].values) == ["cmu", "ome"]
    assert dataset["tiles"].data.chunks[0][0] == 16
    np.testing.assert_array_equal(dataset["tiles"][n_cmu].values, ome["tiles"][0])
    np.testing.assert_array_equal(dataset["coords"].values[:n_cmu], cmu["coords"][:])
    assert (dataset["slide_index"].values == np.repeat([0, 1], [n_cmu, n_ome])).all()


def test_tile_reader_random_access_survives_pickling(store):
    reader = TileReader(store)
    n_cmu = open_slide_group(store, "cmu")["tiles"].shape[0]
    assert reader.locate(n_cmu) == ("ome", 0)
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone[n_cmu + 1], open_slide_group(store, "ome")["tiles"][1])
    np.testing.assert_array_equal(clone.coords(-1), open_slide_group(store, "ome")["coords"][-1])
    with pytest.raises(IndexError):
        reader[len(reader)]


def test_readers_see_only_complete_slides(store):
    half_written = store.new_staging_path("late")
    zarr.open_group(half_written, mode="w").attrs["partial"] = True
    try:
        assert TileReader(store).slide_ids == ["cmu", "ome"]
        with pytest.raises(KeyError, match="late"):
            open_tiles(store, ["late"])
    finally:
        import shutil

        shutil.rmtree(half_written)


def test_not_a_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="not a distillpath tile store"):
        open_tiles(tmp_path)


def test_codec_rejects_layouts_jpeg_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="one RGB image"):
        zarr.create_array(tmp_path / "a", shape=(4, 8, 8, 3), chunks=(2, 8, 8, 3), dtype="uint8",
                          serializer=JpegCodec(), compressors=None)
    with pytest.raises(ValueError, match="subsampling"):
        JpegCodec(subsampling="411")


@pytest.mark.slow
def test_domain_packages_import_without_torch_or_prefect():
    code = "import sys, tiling, storage; bad = {'torch', 'prefect', 'timm'} & set(sys.modules); assert not bad, bad"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
