"""Tissue detection finds stained tissue, ignores glass, noise and marker ink."""

from __future__ import annotations

import cv2
import numpy as np

from tests.conftest import CMU_SVS, write_tiff
from tiling.config import TissueConfig
from tiling.slide import open_backend, opened_slide
from tiling.tissue import Thumbnail, detect_tissue, read_thumbnail


def _cmu_thumbnail() -> Thumbnail:
    backend = open_backend(CMU_SVS)
    return read_thumbnail(backend, backend.mpp_um, 8.0)


def test_thumbnail_has_the_physical_size_of_the_slide():
    thumbnail = _cmu_thumbnail()
    assert thumbnail.rgb.shape == (round(2967 * 0.499 / 8), round(2220 * 0.499 / 8), 3)
    # the level-0 extent really rendered: within one view pixel (16 level-0 px) of the slide, never beyond
    covered_x, covered_y = thumbnail.covered_level0_px
    assert 2220 - 16 <= covered_x <= 2220 and 2967 - 16 <= covered_y <= 2967


def test_real_tissue_is_found_and_glass_is_not():
    thumbnail = _cmu_thumbnail()
    mask = detect_tissue(thumbnail, TissueConfig())
    assert 0.2 < mask.mean() < 0.8
    glass = thumbnail.rgb.min(axis=2) > 215
    assert (mask & glass).sum() < 0.1 * glass.sum()


def test_blank_noisy_glass_gives_an_empty_mask():
    rng = np.random.default_rng(1)
    glass = (235 + rng.integers(-8, 9, (300, 300, 3))).astype(np.uint8)
    assert not detect_tissue(Thumbnail(glass, 8.0), TissueConfig()).any()


def test_green_and_blue_marker_ink_is_suppressed():
    tissue = _cmu_thumbnail().rgb[60:120, 60:110]  # a real tissue patch
    canvas = np.full((200, 300, 3), 238, dtype=np.uint8)
    canvas[70:130, 125:175] = tissue
    config = TissueConfig(min_component_area_um2=0)
    clean = detect_tissue(Thumbnail(canvas.copy(), 8.0), config)
    cv2.line(canvas, (10, 30), (290, 30), (20, 160, 40), 6)  # green marker on glass
    cv2.line(canvas, (10, 170), (290, 170), (20, 40, 170), 6)  # blue marker on glass
    with_suppression = detect_tissue(Thumbnail(canvas, 8.0), config)
    without = detect_tissue(Thumbnail(canvas, 8.0), config.model_copy(update={"suppress_pen": False}))
    for row in (30, 170):
        assert without[row].sum() > 200  # ink is saturated: naive detection takes it for tissue
        assert with_suppression[row - 5 : row + 6].sum() == 0
    # the ink does not change what is found on the tissue (it would raise the Otsu threshold)
    assert clean[70:130, 125:175].mean() > 0.5
    assert (with_suppression[70:130, 125:175] == clean[70:130, 125:175]).mean() > 0.97


def test_a_thumbnail_keeps_one_exact_scale_across_its_blocks(tmp_path):
    """Dark bands every 500 level-0 px land where the thumbnail's extent says, in every block.

    At 0.6 µm/px from 0.25 µm/px a 1,024-px block spans 2,457.6 level pixels; rounding each block's
    footprint to whole pixels shifted and stretched blocks by up to 0.2 thumbnail px.
    """
    width, centres = 7000, np.arange(250, 7000, 500)  # band edges at centre ± 12 level-0 px
    image = np.full((600, width, 3), 235, np.uint8)
    for centre in centres:
        image[:, centre - 12 : centre + 12] = 20
    with opened_slide(write_tiff(tmp_path / "bands.tif", image, 0.25, pyramid=False)) as backend:
        thumbnail = read_thumbnail(backend, 0.25, 0.6)
    assert thumbnail.rgb.shape[1] > 2 * 1024  # three blocks across
    darkness = 255.0 - thumbnail.rgb[50:-50].mean(axis=(0, 2))
    darkness -= np.median(darkness)
    px_per_level0 = thumbnail.rgb.shape[1] / thumbnail.covered_level0_px[0]
    for centre in centres:
        expected = centre * px_per_level0 - 0.5  # thumbnail pixel (i) has its centre at i + 0.5
        window = np.arange(int(expected) - 8, int(expected) + 9)
        found = float((darkness[window] * window).sum() / darkness[window].sum())
        assert abs(found - expected) < 0.05, (centre, found, expected)
