"""Shard files written without zarr's pipeline are byte for byte what zarr writes."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from storage.jpeg_codec import JpegCodec
from storage.shard_file import (
    UnsupportedShardLayoutError,
    jpeg_codec_of,
    read_shard,
    read_shard_encoded,
    read_shard_images,
    write_shard,
)
from tests.conftest import cmu_rgb


def _tiles(count: int) -> np.ndarray:
    rgb = cmu_rgb()
    tiles = [rgb[y : y + 224, x : x + 224] for y in range(0, 2700, 224) for x in range(896, 2000, 224)]
    return np.stack((tiles * (count // len(tiles) + 1))[:count])


def _array(path, shape, shards=128, **codecs):
    return zarr.create_array(
        path,
        shape=shape,
        chunks=(1, 224, 224, 3),
        shards=(shards, 224, 224, 3),
        dtype="uint8",
        fill_value=0,
        **({"serializer": JpegCodec(), "compressors": None} | codecs),
    )


def test_full_and_partial_shards_equal_zarrs_own(tmp_path):
    tiles = _tiles(300)
    by_zarr = _array(tmp_path / "zarr", tiles.shape)
    by_zarr[:] = tiles
    ours = _array(tmp_path / "ours", tiles.shape)
    for shard in range(3):
        write_shard(tmp_path / "ours", ours, shard, tiles[shard * 128 : (shard + 1) * 128])
    for shard in range(3):
        key = f"c/{shard}/0/0/0"
        assert (tmp_path / "ours" / key).read_bytes() == (tmp_path / "zarr" / key).read_bytes()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ours", mode="r")[:], by_zarr[:])


def test_read_shard_gives_what_zarr_reads_in_two_and_three_dimensional_layouts(tmp_path):
    tiles = _tiles(300)
    flat = _array(tmp_path / "flat", tiles.shape)
    flat[:] = tiles
    expected = flat[256:300]
    np.testing.assert_array_equal(read_shard(tmp_path / "flat", flat, 2, 44), expected)
    per_condition = zarr.create_array(
        tmp_path / "conditions",
        shape=(2, 300, 224, 224, 3),
        chunks=(1, 1, 224, 224, 3),
        shards=(1, 128, 224, 224, 3),
        dtype="uint8",
        fill_value=0,
        serializer=JpegCodec(),
        compressors=None,
    )
    per_condition[1] = tiles
    np.testing.assert_array_equal(read_shard(tmp_path / "conditions", per_condition, (1, 2), 44), expected)
    with pytest.raises(ValueError, match="fewer than 45 images"):
        read_shard(tmp_path / "flat", flat, 2, 45)


def test_a_piece_of_a_shard_reads_as_that_slice_of_the_whole(tmp_path):
    flat = _array(tmp_path / "flat", (300, 224, 224, 3))
    flat[:] = _tiles(300)
    whole = read_shard_encoded(tmp_path / "flat", flat, 1, 128)
    assert read_shard_encoded(tmp_path / "flat", flat, 1, 16, start=40) == whole[40:56]
    assert (
        read_shard_encoded(tmp_path / "flat", flat, 2, 4, start=40)
        == read_shard_encoded(tmp_path / "flat", flat, 2, 44)[40:]
    )
    with pytest.raises(ValueError, match="fewer than 45 images"):
        read_shard_encoded(tmp_path / "flat", flat, 2, 5, start=40)
    with pytest.raises(ValueError, match="outside a shard of 128"):
        read_shard_encoded(tmp_path / "flat", flat, 1, 16, start=120)


def test_chosen_images_read_as_those_of_the_whole_shard_in_the_order_asked(tmp_path):
    flat = _array(tmp_path / "flat", (300, 224, 224, 3))
    flat[:] = _tiles(300)
    whole = read_shard_encoded(tmp_path / "flat", flat, 1, 128)
    chosen = [5, 127, 6, 0, 7, 5, 60]  # runs, a repeat, images far apart
    assert read_shard_images(tmp_path / "flat", flat, 1, chosen) == [whole[i] for i in chosen]
    assert read_shard_images(tmp_path / "flat", flat, 1, []) == []
    with pytest.raises(ValueError, match="no valid bytes"):
        read_shard_images(tmp_path / "flat", flat, 2, [43, 44])  # the last shard holds 44 images
    with pytest.raises(ValueError, match="outside a shard of 128"):
        read_shard_images(tmp_path / "flat", flat, 1, [128])


def test_other_layouts_are_refused(tmp_path):
    with pytest.raises(UnsupportedShardLayoutError):
        jpeg_codec_of(_array(tmp_path / "gzip", (4, 224, 224, 3), shards=2, serializer="auto", compressors="auto"))
