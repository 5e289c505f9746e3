"""Local refinement of a coarse registration, on a warped copy of the CMU sample with a known mapping.

The moving slide is the sample rotated, scaled and shifted as in
``test_registration_core``, plus a smooth 15 µm warp of 2 mm wavelength that a
rigid + affine registration at 24 µm/px cannot follow, so the global result
is off by several µm. Refinement at 1 µm/px anchors, 250 µm apart, must bring
tile centres to within 1 µm (2 px at 0.5 µm/px).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from registration import RegistrationConfig, RegistrationResult, register_slides
from registration.config import RefinementConfig
from registration.refine import RefinedRegistration, refine_registration, select_anchors
from tests import test_registration_core as core
from tests.conftest import CMU_SVS, write_tiff
from tiling.slide import opened_slide, read_region

WARP_UM, WAVELENGTH_UM = 15.0, 2000.0
COARSE = {"view_mpp_um": 24.0, "stages": ("rigid", "affine")}
REFINE = {"anchor_spacing_um": 250.0, "patch_size_um": 150.0, "interpolation_sigma_um": 125.0}

pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")


def _smooth_um(moving_um: np.ndarray) -> np.ndarray:
    phase = 2 * np.pi * moving_um / WAVELENGTH_UM
    return WARP_UM * np.stack([np.sin(phase[:, 1]), np.cos(phase[:, 0])], axis=1)


def _rigid_scale_shift() -> np.ndarray:
    return core.SCALE * core._rotation(core.ANGLE_RAD)


def _moving_to_fixed_um(moving_um: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(_rigid_scale_shift())
    return core.CENTRE_UM + (moving_um - core.CENTRE_UM - core.SHIFT_UM) @ inverse.T + _smooth_um(moving_um)


def _fixed_to_moving_um(fixed_um: np.ndarray) -> np.ndarray:
    """Ground truth, by fixed-point iteration: the warp's gradient is under 0.05, so it converges exactly."""
    forward = _rigid_scale_shift()
    moving_um = core.CENTRE_UM + core.SHIFT_UM + (fixed_um - core.CENTRE_UM) @ forward.T
    for _ in range(60):
        moving_um = core.CENTRE_UM + core.SHIFT_UM + (fixed_um - core.CENTRE_UM - _smooth_um(moving_um)) @ forward.T
    return moving_um


@pytest.fixture(scope="module")
def smooth_slide(tmp_path_factory, cmu_pixels) -> Path:
    path = tmp_path_factory.mktemp("smooth") / "smooth-060.tif"
    return core._write_resampled(path, cmu_pixels, _moving_to_fixed_um, core.MOVING_SIZE_UM, core.STAIN_GAMMA)


@pytest.fixture(scope="module")
def coarse(smooth_slide) -> RegistrationResult:
    return register_slides(CMU_SVS, smooth_slide, RegistrationConfig(**COARSE))


@pytest.fixture(scope="module")
def tile_centres(cmu_pixels) -> tuple[np.ndarray, np.ndarray]:
    """Fixed tissue points (one per 8 µm) and their true moving positions, level-0 px."""
    fixed_um = core._tissue_points_um(cmu_pixels)
    moving_um = _fixed_to_moving_um(fixed_um)
    margin = core.EDGE_MARGIN_UM
    on_moving = np.all((moving_um > margin) & (moving_um < core.MOVING_SIZE_UM - margin), axis=1)
    return fixed_um[on_moving] / core.FIXED_MPP_UM, moving_um[on_moving] / core.MOVING_MPP_UM


@pytest.fixture(scope="module")
def refined(coarse, tile_centres) -> RefinedRegistration:
    return refine_registration(coarse, tile_centres[0], RefinementConfig(**REFINE))


def _error_um(mapped_px: np.ndarray, true_px: np.ndarray) -> np.ndarray:
    return np.linalg.norm(mapped_px - true_px, axis=1) * core.MOVING_MPP_UM


@pytest.mark.slow  # a whole registration: too long for the fast lane
def test_refinement_brings_tile_centres_within_a_micrometre(coarse, refined, tile_centres):
    fixed_px, true_px = tile_centres
    before = _error_um(coarse.map_points(fixed_px), true_px)
    after = _error_um(refined.map_points(fixed_px), true_px)
    assert np.median(before) > 3.0  # the coarse registration is off by several µm
    assert refined.accepted.mean() > 0.8
    assert np.median(after) <= 1.0
    assert np.median(after) < np.median(before) / 3
    assert np.percentile(after, 90) < np.percentile(before, 90)
    assert np.all(refined.ncc_after[refined.accepted] >= refined.ncc_before[refined.accepted] - 0.05)


def test_anchors_are_tile_centres_one_per_cell():
    points = np.array([[0, 0], [10, 10], [20, 20], [1000, 0], [1000, 1000]], dtype=float)
    anchors = select_anchors(points, mpp_um=0.5, spacing_um=100.0)
    assert sorted(map(tuple, anchors)) == [(10, 10), (1000, 0), (1000, 1000)]


@pytest.mark.slow  # a whole registration: too long for the fast lane
def test_anchor_on_glass_is_rejected_and_the_global_transform_is_kept(coarse, cmu_pixels):
    glass = np.all(cmu_pixels > 215, axis=-1)
    block = 400  # px, 200 µm: find a block of pure glass on the fixed slide
    sums = glass[: glass.shape[0] // block * block, : glass.shape[1] // block * block]
    sums = sums.reshape(glass.shape[0] // block, block, -1, block).mean(axis=(1, 3))
    row, col = np.argwhere(sums > 0.99)[0]
    point = np.array([[(col + 0.5) * block, (row + 0.5) * block]])
    result = refine_registration(coarse, point, RefinementConfig(**REFINE))
    assert not result.accepted[0]
    assert "fixed patch is" in result.reasons[0] and "tissue" in result.reasons[0]
    np.testing.assert_array_equal(result.map_points(point), coarse.map_points(point))


@pytest.mark.slow  # a whole registration: too long for the fast lane
def test_anchor_on_unrelated_content_is_rejected(coarse, refined, smooth_slide, tmp_path):
    """A moving slide whose area around one anchor shows other tissue: that anchor must not be trusted."""
    moving_um = _fixed_to_moving_um(refined.anchors_xy * core.FIXED_MPP_UM)
    from_centre = np.linalg.norm(moving_um - core.MOVING_SIZE_UM / 2, axis=1)
    index = int(np.argmin(np.where(refined.accepted, from_centre, np.inf)))
    centre_px = moving_um[index] / core.MOVING_MPP_UM
    with opened_slide(smooth_slide) as slide:
        rgb = read_region(slide, 0, (0, 0, *slide.level_dimensions[0])).copy()
    half = round(150 / core.MOVING_MPP_UM)
    x, y = np.round(centre_px).astype(int)
    square = rgb[y - half : y + half, x - half : x + half]
    rgb[y - half : y + half, x - half : x + half] = np.rot90(square, 2)  # the same stain, other structures
    tampered = write_tiff(tmp_path / "tampered.tif", rgb, core.MOVING_MPP_UM)
    result = refine_registration(
        dataclasses.replace(coarse, moving_path=tampered), refined.anchors_xy[[index]], RefinementConfig(**REFINE)
    )
    assert not result.accepted[0]
    assert result.reasons[0]
    np.testing.assert_array_equal(result.corrections_um[0], [0.0, 0.0])


@pytest.mark.slow  # a whole registration: too long for the fast lane
def test_saved_refinement_reloads_and_maps_the_same(refined, tile_centres, tmp_path):
    folder = refined.save(tmp_path / "refined")
    assert (folder / "refinement.json").exists() and (folder / "registration.json").exists()
    loaded = RefinedRegistration.load(folder)
    np.testing.assert_array_equal(loaded.anchors_xy, refined.anchors_xy)
    np.testing.assert_array_equal(loaded.accepted, refined.accepted)
    assert loaded.reasons == refined.reasons
    points = tile_centres[0][::40]
    np.testing.assert_array_equal(loaded.map_points(points), refined.map_points(points))
