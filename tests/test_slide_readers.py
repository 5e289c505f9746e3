"""The fast TIFF-tile path returns OpenSlide's pixels, and falls back where it must."""

from __future__ import annotations

import cv2
import numpy as np
import openslide
import pytest

from tests.conftest import CMU_SVS, write_tiff
from tests.test_tile_accuracy import psnr
from tiling.errors import SlideReadError
from tiling.slide import OpenSlideBackend, open_backend, read_region

RECTS = [(0, 0, 300, 200), (233, 479, 448, 448), (2000, 2800, 400, 400), (-50, -20, 100, 100), (1000, 1000, 1, 1)]


def _openslide_rgb(path, level, rect) -> np.ndarray:
    x, y, w, h = rect
    with openslide.OpenSlide(path) as slide:
        downsample = slide.level_downsamples[level]
        rgba = np.asarray(slide.read_region((round(x * downsample), round(y * downsample)), level, (w, h)))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb


@pytest.mark.parametrize("rect", RECTS)
def test_svs_tiles_decoded_directly_equal_openslide(rect):
    backend = open_backend(CMU_SVS)
    assert backend.name == "openslide+tiff-tiles"
    np.testing.assert_array_equal(read_region(backend, 0, rect), _openslide_rgb(CMU_SVS, 0, rect))


def test_pyramid_levels_decoded_directly_equal_whole_level_decodes(slide_025):
    """Exact level pixels on every level; OpenSlide agrees where its downsample is a whole number
    (on level 2, 4.0006×, it resamples by a fraction of a pixel).
    """
    import tifffile

    backend = open_backend(slide_025)
    assert backend.name == "openslide+tiff-tiles"
    rects = [(64, 96, 300, 260), (400, 128, 224, 224)]
    for level in (0, 1, 2):
        whole_level = tifffile.imread(slide_025, level=level)
        for (x, y, w, h), region in zip(rects, backend.read_regions(level, rects)):
            np.testing.assert_array_equal(region, whole_level[y : y + h, x : x + w])
            if level < 2:
                np.testing.assert_array_equal(region, _openslide_rgb(slide_025, level, (x, y, w, h)))


def test_untiled_tiff_falls_back_to_openslide_pixels(tmp_path, cmu_pixels):
    import tifffile

    path = tmp_path / "strips.tif"
    tifffile.imwrite(
        path, cmu_pixels[:512, :512], photometric="rgb", resolution=(40000, 40000), resolutionunit="CENTIMETER"
    )
    backend = open_backend(path)
    assert not backend.name.endswith("tiff-tiles")
    np.testing.assert_array_equal(read_region(backend, 0, (10, 20, 100, 50)), cmu_pixels[20:70, 10:110])


def test_corrupt_tile_data_is_a_slide_read_error(tmp_path, cmu_pixels):
    path = write_tiff(tmp_path / "corrupt.tif", cmu_pixels[:1024, :1024], 0.25, pyramid=False)
    backend = OpenSlideBackend(path)
    page_offsets = backend._tiff.pages[0].dataoffsets
    data = bytearray(path.read_bytes())
    for offset in page_offsets[:4]:
        data[offset + 20 : offset + 400] = b"\x00" * 380
    path.write_bytes(bytes(data))
    with pytest.raises(SlideReadError, match="corrupt.tif"):
        read_region(open_backend(path), 0, (0, 0, 512, 512))


@pytest.mark.parametrize("source", ["cmu", "pyramid"])
def test_reduced_jpeg_decoding_matches_area_downsampling(source, slide_025):
    """Aperio RGB-JPEG tiles (CMU) and YCbCr-JPEG tiles (libvips pyramid) both decode at 1/2 scale."""
    path = CMU_SVS if source == "cmu" else slide_025
    backend = open_backend(path)
    rects = [(0, 0, 448, 448), (482, 964, 448, 448), (1000, 1500, 444, 444)]
    full = backend.read_regions(0, rects)
    reduced = backend.read_regions(0, rects, reduce=2)
    for rect, big, small in zip(rects, full, reduced):
        assert small.shape == (rect[3] // 2, rect[2] // 2, 3)
        expected = cv2.resize(big, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
        assert psnr(small, expected) > 35, rect


def test_reduced_decoding_refuses_rects_off_its_grid():
    with pytest.raises(ValueError, match="multiples"):
        open_backend(CMU_SVS)._tiles.read_regions(0, [(1, 0, 448, 448)], reduce=2)


def test_pyramid_downsamples_are_the_scale_the_levels_were_built_with():
    from tiling.slide import pyramid_downsamples

    assert pyramid_downsamples([(4440, 5934), (2220, 2967), (1110, 1483), (2167 // 4, 1483 // 2)])[:3] == (
        1.0,
        2.0,
        4.0,
    )
    assert pyramid_downsamples([(2167, 2967), (541, 741)]) == (1.0, 4.0)  # OpenSlide says 4.0035
    assert pyramid_downsamples([(1000, 1000), (300, 300)])[1] == pytest.approx(1000 / 300)  # not a whole factor
