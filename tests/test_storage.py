"""The store reads back through zarr, xarray/dask and the random-access reader, from any process."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings

import imagecodecs
import numpy as np
import pytest
import zarr

from storage.jpeg_codec import JpegCodec
from storage.manifest import read_manifest, write_record
from storage.read import TileReader, open_slide_group, open_tiles
from storage.shard_file import read_shard_encoded
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
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(open_slide_group(store, "cmu")["tiles"][3].mean())


def test_open_tiles_concatenates_slides_lazily_in_shard_chunks(store):
    dataset = open_tiles(store)
    cmu, ome = (open_slide_group(store, s) for s in ("cmu", "ome"))
    n_cmu, n_ome = cmu["tiles"].shape[0], ome["tiles"].shape[0]
    assert dataset.sizes["tile"] == n_cmu + n_ome
    assert list(dataset["slide"].values) == ["cmu", "ome"]
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
        zarr.create_array(
            tmp_path / "a",
            shape=(4, 8, 8, 3),
            chunks=(2, 8, 8, 3),
            dtype="uint8",
            serializer=JpegCodec(),
            compressors=None,
        )
    with pytest.raises(ValueError, match="subsampling"):
        JpegCodec(subsampling="411")


@pytest.mark.slow
def test_domain_packages_import_without_torch_or_prefect():
    code = "import sys, tiling, storage; bad = {'torch', 'prefect', 'timm'} & set(sys.modules); assert not bad, bad"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_tiles_use_the_proposed_jpeg_codec_and_are_plain_baseline_jpegs(store):
    tiles = open_slide_group(store, "cmu")["tiles"]
    metadata = json.loads((store.slide_path("cmu") / "tiles" / "zarr.json").read_text())
    inner = metadata["codecs"][0]["configuration"]["codecs"]
    assert inner == [{"name": "jpeg", "configuration": {"quality": 90, "encoded_color_space": "ycbcr"}}]
    encoded = read_shard_encoded(store.slide_path("cmu") / "tiles", tiles, 0, 2)
    assert encoded[1][:2] == b"\xff\xd8"  # a JPEG stream, decoded below by libjpeg itself with nothing of ours
    np.testing.assert_array_equal(imagecodecs.jpeg8_decode(encoded[1]), tiles[1])


def test_arrays_written_under_the_old_codec_name_still_open_and_keep_it(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, size=(2, 16, 16, 3), dtype=np.uint8)
    array = zarr.create_array(
        tmp_path / "old",
        shape=images.shape,
        chunks=(1, 16, 16, 3),
        dtype="uint8",
        serializer=JpegCodec(),
        compressors=None,
    )
    array[:] = images
    expected = array[:]
    path = tmp_path / "old" / "zarr.json"
    metadata = json.loads(path.read_text())
    metadata["codecs"] = [{"name": "distillpath.jpeg", "configuration": {"quality": 90, "subsampling": "444"}}]
    path.write_text(json.dumps(metadata))
    reopened = zarr.open_array(tmp_path / "old", mode="r")
    np.testing.assert_array_equal(reopened[:], expected)
    assert reopened.metadata.to_dict()["codecs"][0]["name"] == "distillpath.jpeg"
    with pytest.raises(ValueError, match="encoded_color_space"):
        JpegCodec.from_dict({"name": "jpeg", "configuration": {"quality": 90, "encoded_color_space": "rgb"}})


def test_xarray_idioms_select_one_slide_by_its_id(store):
    dataset = open_tiles(store)
    n_cmu = open_slide_group(store, "cmu")["tiles"].shape[0]
    assert isinstance(dataset.slide_id.data, np.ndarray) and isinstance(dataset.slide_index.data, np.ndarray)
    ome = dataset.sel(slide_id="ome")
    np.testing.assert_array_equal(ome.tiles.values, open_slide_group(store, "ome")["tiles"][:])
    dropped = dataset.where(dataset.slide_id == "ome", drop=True)
    assert dropped.sizes["tile"] == dataset.sizes["tile"] - n_cmu
    assert {key: group.sizes["tile"] for key, group in dataset.groupby("slide_id")} == {
        "cmu": n_cmu,
        "ome": dataset.sizes["tile"] - n_cmu,
    }
    means = dataset.tissue_fraction.groupby("slide_id").mean()
    assert means.sel(slide_id="cmu") == pytest.approx(
        float(open_slide_group(store, "cmu")["tissue_fraction"][:].mean())
    )
    assert list(dataset.n_tiles.values) == [n_cmu, dataset.sizes["tile"] - n_cmu]


def test_tile_reader_slices_counts_and_gives_slide_ids_and_coords_in_batches(store):
    reader = TileReader(store)
    cmu, ome = (open_slide_group(store, s) for s in ("cmu", "ome"))
    n_cmu = cmu["tiles"].shape[0]
    assert len(reader) == n_cmu + ome["tiles"].shape[0]
    assert repr(reader) == f"TileReader({str(store.root)!r}, 2 slides, {len(reader)} tiles of 224 px)"
    across = reader[n_cmu - 2 : n_cmu + 2]
    np.testing.assert_array_equal(across, np.concatenate([cmu["tiles"][-2:], ome["tiles"][:2]]))
    np.testing.assert_array_equal(reader[[n_cmu, 0]], np.stack([ome["tiles"][0], cmu["tiles"][0]]))
    assert list(reader.tile_slide_ids([0, n_cmu, -1])) == ["cmu", "ome", "ome"]
    np.testing.assert_array_equal(reader.tile_coords(), np.concatenate([cmu["coords"][:], ome["coords"][:]]))
    np.testing.assert_array_equal(reader.tile_coords(slice(n_cmu, None)), ome["coords"][:])
    with pytest.raises(IndexError):
        reader[[0, len(reader)]]


def test_the_store_tree_lists_without_warnings_and_the_manifest_names_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(OME_TIFF.parent)
    config = TilingConfig(tiles_per_shard=16)
    store = TileStore.create_or_open(tmp_path / "tiles.zarr", config.model_dump())
    write_record(store, tile_slide(SlideSpec(type(OME_TIFF)(OME_TIFF.name), "ome"), store, config))
    assert store.qc_path("ome").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = str(zarr.open_group(store.root, mode="r").tree())
    assert "qc (0,) uint8" in text and "tiles (3, 224, 224, 3) uint8" in text
    assert read_manifest(store).source_path.tolist() == [str(OME_TIFF)]


@pytest.mark.parametrize(
    "key", [slice(None), slice(2, 9), slice(None, None, -3), slice(8, 1, -2), 4, -1, [6, 0, 3], slice(5, 5)]
)
def test_rows_without_dask_index_like_numpy(tmp_path, key):
    """The dask-free view reads the same rows numpy indexing of the concatenation gives."""
    import xarray as xr

    from storage.lazy_arrays import ZarrRows, lazily

    parts = [np.arange(n * 6).reshape(n, 2, 3) + 100 * i for i, n in enumerate((3, 0, 5, 2))]
    paths = []
    for i, part in enumerate(parts):
        array = zarr.create_array(tmp_path / str(i), shape=part.shape, chunks=(2, 2, 3), dtype="int64")
        array[...] = part
        paths.append((str(tmp_path / str(i)), len(part)))
    variable = xr.Variable(("row", "a", "b"), lazily(ZarrRows(paths, (2, 3), np.int64)))
    np.testing.assert_array_equal(variable[key].values, np.concatenate(parts)[key])
    np.testing.assert_array_equal(
        variable[key, 1:, ::2].values,
        np.concatenate(parts)[key][..., 1:, ::2] if not isinstance(key, int) else np.concatenate(parts)[key][1:, ::2],
    )


def test_which_parameters_leave_a_store_unchanged_is_the_caller_s_to_say(tmp_path):
    """Storage knows no tiling field: tiling names its run-only fields (TilingConfig.RUN_ONLY)."""
    root = tmp_path / "tiles.zarr"
    TileStore.create_or_open(root, {"tile_size_px": 224, "threads": 2})
    TileStore.check_can_open(root, {"tile_size_px": 224, "threads": 4}, without_effect=TilingConfig.RUN_ONLY)
    with pytest.raises(StoreError, match="threads: 2 in the store, 4 now"):
        TileStore.check_can_open(root, {"tile_size_px": 224, "threads": 4})
    with pytest.raises(StoreError, match="tile_size_px: 224 in the store, 256 now"):
        TileStore.check_can_open(root, {"tile_size_px": 256, "threads": 2}, without_effect=TilingConfig.RUN_ONLY)
