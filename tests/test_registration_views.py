"""Registration views: where their pixels lie in µm, and what their stain channel measures."""

from __future__ import annotations

import numpy as np
import pytest

from registration.views import render_view, stain_intensity
from tests.conftest import write_tiff
from tiling.errors import MissingMppError

# Ruifrok & Johnston optical-density directions of haematoxylin and eosin (unnormalised).
HAEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286])
EOSIN_OD = np.array([0.072, 0.990, 0.105])


def _stained(od: np.ndarray, amount: float) -> np.ndarray:
    """The RGB colour of ``amount`` of a stain, by Beer-Lambert."""
    unit = od / np.linalg.norm(od)
    return np.clip(np.round(256.0 * np.exp(-amount * unit) - 1.0), 0, 255).astype(np.uint8)


def test_view_pixels_sit_at_their_um_on_an_odd_sized_pyramid(tmp_path):
    """A 2167-px-wide pyramid's 4x level covers 2164 px; the view's spacing must account for it."""
    mpp_um, centre_um, half_size_um = 0.6, np.array([700.0, 900.0]), np.array([150.0, 100.0])
    rgb = np.full((2833, 2167, 3), 245, np.uint8)
    cols, rows = np.arange(2167), np.arange(2833)
    inside_x = np.abs((cols + 0.5) * mpp_um - centre_um[0]) < half_size_um[0]
    inside_y = np.abs((rows + 0.5) * mpp_um - centre_um[1]) < half_size_um[1]
    rgb[np.ix_(inside_y, inside_x)] = _stained(HAEMATOXYLIN_OD, 1.0)
    true_centroid_um = np.array([(cols[inside_x] + 0.5).mean(), (rows[inside_y] + 0.5).mean()]) * mpp_um
    view = render_view(write_tiff(tmp_path / "square.tif", rgb, mpp_um), view_mpp_um=4.0)
    rows_v, cols_v = np.mgrid[0 : view.intensity.shape[0], 0 : view.intensity.shape[1]]
    weights = view.intensity / view.intensity.sum()
    centroid_um = np.array(
        [((cols_v + 0.5) * view.spacing_um[0] * weights).sum(), ((rows_v + 0.5) * view.spacing_um[1] * weights).sum()]
    )
    assert view.tissue_mask.any()
    assert np.abs(centroid_um - true_centroid_um).max() < 0.1  # reading the level as the whole slide put x 1 µm off


def test_haematoxylin_channel_ignores_eosin():
    pixels = np.stack([_stained(HAEMATOXYLIN_OD, 1.0), _stained(EOSIN_OD, 1.0), np.full(3, 255, np.uint8)])[None]
    haematoxylin = stain_intensity(pixels, "haematoxylin")[0]
    density = stain_intensity(pixels, "od")[0]
    assert haematoxylin[0] > 0.9 and abs(haematoxylin[1]) < 0.05 and haematoxylin[2] == 0
    assert density[0] > 1 and density[1] > 1 and density[2] == 0


def test_an_mpp_override_fills_a_missing_pixel_size_and_only_a_replacement_replaces_one(tmp_path):
    """As in tiling: ``fixed_mpp_um`` / ``moving_mpp_um`` never silently win over what the file records."""
    rgb = np.full((400, 300, 3), 245, np.uint8)
    rgb[100:300, 100:200] = _stained(HAEMATOXYLIN_OD, 1.0)
    recorded = write_tiff(tmp_path / "recorded.tif", rgb, 0.5)
    unrecorded = write_tiff(tmp_path / "unrecorded.tif", rgb, None)
    assert render_view(recorded, 4.0, mpp_override_um=0.8).mpp_level0_um == pytest.approx(0.5)
    assert render_view(recorded, 4.0, mpp_replace_um=0.8).mpp_level0_um == pytest.approx(0.8)
    assert render_view(unrecorded, 4.0, mpp_override_um=0.8).mpp_level0_um == pytest.approx(0.8)
    assert render_view(unrecorded, 4.0, mpp_replace_um=0.7).mpp_level0_um == pytest.approx(0.7)
    overridden, plain = render_view(recorded, 4.0, mpp_override_um=0.8), render_view(recorded, 4.0)
    assert overridden.spacing_um == plain.spacing_um and overridden.intensity.shape == plain.intensity.shape
    with pytest.raises(MissingMppError):
        render_view(unrecorded, 4.0)
