"""Synthetic PLISM conditions: the files, their pixel sizes, and a ground truth their pixels obey."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest

from registration.synthetic import GroundTruth, SyntheticCondition, make_synthetic_plism
from tests.conftest import CMU_SVS
from tiling.slide import opened_slide, read_region

STAININGS, SCANNERS = ("GMH", "GIVH", "HR"), ("S60", "AT2", "GT450")
PATCH_PX = 41  # 18 µm on the reference: several nuclei
WRONG_OFFSET_UM = 6.0  # about one nucleus: a truth off by this much must not look right
PROBE_UM = 0.5  # the correlation peak is located from samples this far either side of the truth


@pytest.fixture(scope="module")
def plism(tmp_path_factory) -> dict[str, SyntheticCondition]:
    conditions = make_synthetic_plism(CMU_SVS, tmp_path_factory.mktemp("plism"))
    return {condition.name: condition for condition in conditions}


@cache
def _level0(path: Path) -> np.ndarray:
    with opened_slide(path) as slide:
        width, height = slide.level_dimensions[0]
        return read_region(slide, 0, (0, 0, width, height))


def _tissue_grid_px(plism: dict[str, SyntheticCondition], step_px: int = 150) -> np.ndarray:
    """``[N, 2]`` reference level-0 pixels on tissue, away from the slide edges."""
    reference = _level0(plism["GMH_S60"].path)
    height, width = reference.shape[:2]
    xs, ys = np.meshgrid(np.arange(300, width - 300, step_px), np.arange(300, height - 300, step_px))
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    gray = reference.mean(axis=-1)
    return points[gray[points[:, 1], points[:, 0]] < 200].astype(np.float64)


def _normalised(patch: np.ndarray) -> np.ndarray:
    patch = patch.reshape(-1, 3).astype(np.float64)
    return (patch - patch.mean(axis=0)) / (patch.std(axis=0) + 1e-6)


def _correlation(reference_patch: np.ndarray, condition_patch: np.ndarray) -> float:
    """Mean over RGB of the Pearson correlation: blind to each condition's colour and contrast."""
    return float((_normalised(reference_patch) * _normalised(condition_patch)).mean())


def _patch_correlations(
    plism: dict[str, SyntheticCondition], name: str, centres_px: np.ndarray, offset_um: np.ndarray
) -> np.ndarray:
    """Correlation of reference patches around ``centres_px`` with the condition sampled where the truth
    (applied to the reference pixels shifted by ``offset_um``) says they are.
    """
    reference, condition = _level0(plism["GMH_S60"].path), _level0(plism[name].path)
    truth = plism[name].truth
    grid = np.stack(np.meshgrid(np.arange(PATCH_PX), np.arange(PATCH_PX)), axis=-1).reshape(-1, 2) - PATCH_PX // 2
    scores = []
    for centre in centres_px.astype(int):
        pixels = centre + grid
        reference_patch = reference[pixels[:, 1], pixels[:, 0]]
        mapped = truth.map_points(pixels + 0.5 + offset_um / truth.reference_mpp_um) - 0.5  # remap: pixel centres
        sampled = cv2.remap(
            condition, mapped[:, :1].astype(np.float32), mapped[:, 1:].astype(np.float32), cv2.INTER_LINEAR
        )
        scores.append(_correlation(reference_patch, sampled))
    return np.array(scores)


def test_writes_every_condition_and_its_truth(plism):
    assert sorted(plism) == sorted(f"{staining}_{scanner}" for staining in STAININGS for scanner in SCANNERS)
    for name, condition in plism.items():
        assert condition.path.name == f"{name}.tif" and condition.path.is_file()
        assert (condition.path.parent / "ground_truth" / f"{name}.json").is_file()
    points = np.random.default_rng(0).uniform(0, 3000, size=(50, 2))
    np.testing.assert_allclose(plism["GMH_S60"].truth.map_points(points), points, rtol=0, atol=1e-9)
    assert not np.allclose(plism["GIVH_S60"].truth.map_points(points), points, atol=1.0)


def test_each_tiff_reads_back_its_condition_pixel_size(plism):
    mpps = set()
    for condition in plism.values():
        with opened_slide(condition.path) as slide:
            assert slide.mpp_um == pytest.approx(condition.mpp_um, rel=1e-6)
            assert condition.truth.mpp_um == condition.mpp_um
            assert len(slide.level_dimensions) > 1  # a pyramid
        mpps.add(condition.mpp_um)
    assert len(mpps) == len(SCANNERS)


def test_saved_truth_reloads_and_maps_identically(plism, tmp_path):
    truth = plism["HR_GT450"].truth
    truth.save(tmp_path / "truth.json")
    loaded = GroundTruth.load(tmp_path / "truth.json")
    points = np.random.default_rng(1).uniform(0, 3000, size=(100, 2))
    assert loaded == truth
    np.testing.assert_array_equal(loaded.map_points(points), truth.map_points(points))
    assert GroundTruth.load(plism["HR_GT450"].path.parent / "ground_truth" / "HR_GT450.json") == truth


def test_map_points_is_exactly_undone_by_the_closed_form_inverse(plism):
    points = np.random.default_rng(2).uniform(0, 3000, size=(1000, 2))
    for condition in plism.values():
        assert np.abs(condition.truth.map_points_inverse(condition.truth.map_points(points)) - points).max() < 1e-6


@pytest.mark.parametrize("name", [f"{s}_{c}" for s in STAININGS for c in SCANNERS if (s, c) != ("GMH", "S60")])
def test_condition_pixels_sit_where_the_truth_maps_reference_pixels(plism, name):
    centres = _tissue_grid_px(plism, step_px=400)
    right = _patch_correlations(plism, name, centres, np.zeros(2))
    wrong = _patch_correlations(plism, name, centres, np.array([WRONG_OFFSET_UM, 0.0]))
    assert len(centres) >= 10
    assert np.median(right) > 0.9, right  # measured 0.97-0.99
    assert np.median(wrong) < 0.3, wrong  # measured ~0.01
    # Sub-pixel: the correlation peaks at the truth (measured ≤ 0.02 µm off; half a pixel would be 0.22 µm).
    for axis in (0, 1):
        probe = np.zeros(2)
        probe[axis] = PROBE_UM
        before, at, after = (_patch_correlations(plism, name, centres, s * probe).mean() for s in (-1, 0, 1))
        peak_um = PROBE_UM * (before - after) / (2 * (before - 2 * at + after))
        assert abs(peak_um) < 0.1, (axis, peak_um)


def _affine_residual_um(source_px: np.ndarray, target_px: np.ndarray, mpp_um: float) -> float:
    """Largest error (µm) of the best affine map from ``source_px`` to ``target_px``."""
    design = np.hstack([source_px, np.ones((len(source_px), 1))])
    solution, *_ = np.linalg.lstsq(design, target_px, rcond=None)
    return float(np.abs(design @ solution - target_px).max() * mpp_um)


def test_scanners_of_one_staining_differ_by_an_affine_placement_only(plism):
    points = _tissue_grid_px(plism, step_px=100)
    for staining in STAININGS:
        for first, second in combinations(SCANNERS, 2):
            a, b = plism[f"{staining}_{first}"], plism[f"{staining}_{second}"]
            residual = _affine_residual_um(a.truth.map_points(points), b.truth.map_points(points), b.mpp_um)
            assert residual < 1e-6


def test_stainings_of_one_scanner_differ_by_a_few_um_of_smooth_warp(plism):
    points = _tissue_grid_px(plism, step_px=100)
    for scanner in SCANNERS:
        for first, second in combinations(STAININGS, 2):
            a, b = plism[f"{first}_{scanner}"], plism[f"{second}_{scanner}"]
            moved_um = np.linalg.norm(a.truth.map_points(points) - b.truth.map_points(points), axis=1) * a.mpp_um
            assert a.truth.placement == b.truth.placement
            assert 1.0 < moved_um.max() < 25.0
            assert _affine_residual_um(a.truth.map_points(points), b.truth.map_points(points), b.mpp_um) > 1.0


def test_a_seed_and_a_condition_name_fix_the_condition(plism, tmp_path):
    kwargs = {"stainings": ("HR", "GMH"), "scanners": ("GT450", "S60"), "mpp_scale": 6.0}
    first = {c.name: c for c in make_synthetic_plism(CMU_SVS, tmp_path / "a", **kwargs)}
    again = {c.name: c for c in make_synthetic_plism(CMU_SVS, tmp_path / "b", **kwargs)}
    other = {c.name: c for c in make_synthetic_plism(CMU_SVS, tmp_path / "c", seed=1, **kwargs)}
    np.testing.assert_array_equal(_level0(first["HR_GT450"].path), _level0(again["HR_GT450"].path))
    assert first["HR_GT450"].truth == again["HR_GT450"].truth
    # The same geometry as in the 3 × 3 set: other conditions and pixel sizes do not change it.
    assert first["HR_GT450"].truth.placement == plism["HR_GT450"].truth.placement
    assert first["HR_GT450"].truth.waves == plism["HR_GT450"].truth.waves
    assert other["HR_GT450"].truth.placement != first["HR_GT450"].truth.placement
    assert other["HR_GT450"].truth.waves != first["HR_GT450"].truth.waves


@pytest.mark.slow
def test_command_line_writes_the_conditions_asked_for(tmp_path):
    command = [
        sys.executable,
        "-m",
        "registration.synthetic",
        str(tmp_path),
        "--stainings",
        "GMH",
        "HR",
        "--scanners",
        "S60",
        "AT2",
        "--seed",
        "3",
        "--mpp-scale",
        "8",
        "--source",
        str(CMU_SVS),
    ]
    run = subprocess.run(command, capture_output=True, text=True, check=False, cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == ["GMH_AT2.tif", "GMH_S60.tif", "HR_AT2.tif", "HR_S60.tif"]
    assert len(list((tmp_path / "ground_truth").glob("*.json"))) == 4
    assert "4 conditions" in run.stdout
