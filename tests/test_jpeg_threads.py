"""The JPEG coding pool follows the run's --threads instead of taking every core of the machine."""

import numpy as np
import pytest

from storage import jpeg_codec
from storage.jpeg_codec import JpegCodec, coding_threads, set_coding_threads
from storage.tile_store import TileStore
from tests.conftest import CMU_SVS
from tiling.config import TilingConfig
from tiling.slide_list import SlideSpec
from tiling.tile_slide import tile_slide


def test_the_pool_is_resized_and_still_codes():
    set_coding_threads(3)
    assert coding_threads()._max_workers == 3
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    codec = JpegCodec(quality=100)
    set_coding_threads(1)
    assert coding_threads()._max_workers == 1
    decoded = codec.decode_images(codec.encode_images(images))
    assert [d.shape for d in decoded] == [(16, 16, 3)] * 5
    with pytest.raises(ValueError, match="at least 1"):
        set_coding_threads(0)


def test_the_default_is_bounded_not_every_core(monkeypatch):
    monkeypatch.setattr(jpeg_codec, "_pool", None)
    assert coding_threads()._max_workers == jpeg_codec.DEFAULT_CODING_THREADS <= 4


def test_tiling_a_slide_sizes_the_pool_to_its_threads(tmp_path):
    config = TilingConfig(threads=1)
    set_coding_threads(4)
    store = TileStore.create_or_open(tmp_path / "tiles.zarr", config.model_dump())
    record = tile_slide(SlideSpec(path=CMU_SVS, slide_id="cmu"), store, config)
    assert record.status == "done"
    assert coding_threads()._max_workers == 1
