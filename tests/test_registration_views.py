"""Registration views: where their pixels lie in µm, and what their stain channel measures."""

from __future__ import annotations

import numpy as np

from registration.views import render_view, stain_intensity
from tests.conftest import write_tiff

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
