"""One pixel convention from slide to aligned tile (docs/adr/0003-pixel-convention.md).

Level-0 pixel ``k`` spans ``[k, k + 1)``, its centre is ``k + 0.5``; µm are
level-0 coordinates times the mpp; elastix's physical space is those µm.
Checked against references that share no code with the package: a plain
area average of the slide's pixels, and the exact ground truth of a
condition that is a pure resampling of the reference (another pixel size,
a rotation, a shift; no warp, no other stain) made from a Ki67 crop, not
the usual CMU sample.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from registration.aligned_tiles import (
    IdentityMapping,
    extract_tiles,
    map_tiles,
    reference_tiles,
)
from registration.config import RefinementConfig
from registration.phase_correlation import phase_shift_px
from registration.refine import refine_registration
from registration.register import register_slides
from registration.synthetic import make_synthetic_plism
from tests.conftest import write_tiff
from tiling.config import TilingConfig
from tiling.slide import opened_slide, read_region
from tiling.tile_reader import iter_tile_batches
from tiling.tile_slide import plan_tiles

pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")

KI67 = Path(__file__).parent / "data" / "registration" / "os2_ki67_two_scanners" / "OS-2-ndpi.ome.tif"
TILING = TilingConfig(tile_size_px=64)  # 32 µm tiles at 0.5 µm/px: about 200 on the 0.5 mm crop


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])


def _fourier_shifted(image: np.ndarray, shift_xy: tuple[float, float]) -> np.ndarray:
    """``image`` with its content moved by ``shift_xy`` px, exactly (periodically), by the Fourier shift theorem."""
    fy, fx = np.fft.fftfreq(image.shape[0])[:, None], np.fft.fftfreq(image.shape[1])[None, :]
    return np.fft.ifft2(np.fft.fft2(image) * np.exp(-2j * np.pi * (fx * shift_xy[0] + fy * shift_xy[1]))).real


@pytest.mark.parametrize("crop", [(slice(40, 264), slice(40, 264)), (slice(40, 263), slice(37, 266))])
def test_phase_correlation_finds_exact_sub_pixel_shifts_and_no_shift_between_equal_images(crop):
    """Even and odd patch sides: the half spectrum it works on has a Nyquist column only for even widths."""
    texture = cv2.GaussianBlur(np.random.default_rng(0).random((300, 300)), (0, 0), 1.5)
    for shift in ((0.0, 0.0), (0.3, 0.15), (0.5, -0.25), (-3.7, 2.2)):
        moved = _fourier_shifted(texture, shift)
        found, peak = phase_shift_px(texture[crop], moved[crop])
        np.testing.assert_allclose(found, shift, atol=0.02)
        assert peak > 0.8
    unrelated = np.random.default_rng(1).random((224, 224))
    assert phase_shift_px(texture[:224, :224], unrelated)[1] < 0.2


@pytest.fixture(scope="module")
def pure_resample(tmp_path_factory):
    """Reference ``GMH_P`` (0.25 µm/px) and ``GMH_AT2`` (0.2527 µm/px, rotated, shifted, rescaled by < 0.6 %)."""
    conditions = make_synthetic_plism(
        KI67,
        tmp_path_factory.mktemp("pure"),
        stainings=("GMH",),
        scanners=("P", "AT2"),
        reference=("GMH", "P"),
        mpp_scale=1.0,
    )
    return {condition.scanner: condition for condition in conditions}


def _area_average(level0: np.ndarray, top_left: np.ndarray, size: int, factor: int) -> np.ndarray:
    """Plain mean of ``factor`` × ``factor`` level-0 pixels per output pixel, from ``top_left`` (whole px)."""
    x, y = (int(v) for v in top_left)
    block = level0[y : y + size * factor, x : x + size * factor].astype(np.float64)
    return block.reshape(size, factor, size, factor, 3).mean(axis=(1, 3))


@pytest.mark.slow  # a whole registration: too long for the fast lane
@pytest.mark.parametrize("pyramid", [True, False], ids=["pyramid", "level-0-only"])
def test_reference_tiles_are_plain_area_averages_at_their_stored_corner(pure_resample, tmp_path, pyramid):
    reference = pure_resample["P"]
    with opened_slide(reference.path) as slide:
        level0 = read_region(slide, 0, (0, 0, *slide.level_dimensions[0]))
    path = write_tiff(tmp_path / "reference.tif", level0, reference.mpp_um, pyramid=pyramid)
    tiles = reference_tiles(path, reference.mpp_um, TILING)
    assert tiles.tile_size_level0 == 128 and len(tiles) > 100
    _, nodes = map_tiles(IdentityMapping(), tiles, 8)
    aligned = np.concatenate(list(extract_tiles(path, reference.mpp_um, nodes, 64, tiles.mpp_um)))
    with opened_slide(path) as slide:
        plan = plan_tiles(path, slide, reference.mpp_um, TILING)
        stored = {
            int(i): t
            for b in iter_tile_batches(slide, plan.resolution, plan.grid, TILING.qc, block_tiles=8, threads=1)
            for i, t in zip(b.grid_index, b.tiles)
        }
    np.testing.assert_array_equal(plan.coordinates, tiles.top_left_xy)
    shifts, half_pixel_off = [], []
    for index, (corner, tile) in enumerate(zip(tiles.top_left_xy, aligned)):
        average = _area_average(level0, corner, 64, 2)
        assert np.abs(tile - average).mean() < 3.0  # JPEG and rounding, no resampling of its own
        shifts.append(phase_shift_px(_grey(average), _grey(tile))[0])
        if index in stored:  # the tile store's tile of the same cell (tiles QC rejects are not stored)
            shifts.append(phase_shift_px(_grey(average), _grey(stored[index]))[0])
        # The check's power: the average one level-0 pixel further on is half an output pixel away.
        half_pixel_off.append(phase_shift_px(_grey(_area_average(level0, corner + 1, 64, 2)), _grey(tile))[0])
    assert np.abs(np.median(shifts, axis=0)).max() <= 0.02, np.median(shifts, axis=0)  # measured 0.00-0.02
    assert np.abs(shifts).max() <= 0.1, np.abs(shifts).max()  # JPEG noise on single tiles: measured ≤ 0.06
    np.testing.assert_allclose(np.median(half_pixel_off, axis=0), [0.5, 0.5], atol=0.05)


# Refinement at the slides' own pixel size, anchors 100 µm apart: what brings every corner to 0.05 µm.
FINE = {"patch_mpp_um": 0.25, "anchor_spacing_um": 100.0, "patch_size_um": 128.0, "interpolation_sigma_um": 60.0}


@pytest.mark.slow  # a whole registration: too long for the fast lane
def test_tiles_of_a_pure_resampling_match_the_reference_to_a_tenth_of_a_pixel(pure_resample):
    """Measured on 128-px tiles: their own check, truth-mapped tiles, scatters up to 0.085 px (64-px tiles: more)."""
    reference, condition = pure_resample["P"], pure_resample["AT2"]
    tiling = TilingConfig(tile_size_px=128)
    tiles = reference_tiles(reference.path, reference.mpp_um, tiling)
    result = refine_registration(
        register_slides(reference.path, condition.path), tiles.centres(), RefinementConfig(**FINE)
    )
    corners, nodes = map_tiles(result, tiles, 8)
    corner_error_um = np.linalg.norm(corners - condition.truth.map_points(tiles.top_left_xy), axis=1) * condition.mpp_um
    assert np.median(corner_error_um) <= 0.025, np.median(corner_error_um)  # measured 0.013 (unrefined 0.022)
    assert corner_error_um.max() <= 0.06, corner_error_um.max()  # measured 0.050 (unrefined 0.085)
    _, reference_nodes = map_tiles(IdentityMapping(), tiles, 8)
    expected = np.concatenate(list(extract_tiles(reference.path, reference.mpp_um, reference_nodes, 128, tiles.mpp_um)))
    aligned = np.concatenate(list(extract_tiles(condition.path, condition.mpp_um, nodes, 128, tiles.mpp_um)))
    shifts = np.array([phase_shift_px(_grey(a), _grey(b))[0] for a, b in zip(expected, aligned)])
    assert len(shifts) > 30
    assert np.abs(np.median(shifts, axis=0)).max() <= 0.05, np.median(shifts, axis=0)  # measured 0.02
    assert np.linalg.norm(shifts, axis=1).max() <= 0.1, np.linalg.norm(shifts, axis=1).max()  # measured 0.085
