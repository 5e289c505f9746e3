"""Low-resolution views of a slide in physical units, ready to be registered.

A view is the whole slide rendered at about ``view_mpp_um`` µm/px, turned
into one stain-robust intensity channel with the glass set to 0. Its pixel
``(row, col)`` covers the level-0 area around the point
``((col + 0.5) * spacing_x, (row + 0.5) * spacing_y)`` µm from the slide's
top-left corner, where ``spacing`` is the *effective* µm/px: the level-0
extent the view was rendered from, divided by its size in pixels. It differs
from the requested ``view_mpp_um`` by the rounding of the view to whole
pixels, and by the edge pixels a pyramid level or the thumbnail reader leave
out (see :class:`tiling.tissue.Thumbnail`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from registration.stains import OD_OF_UINT8
from registration.stains import UNMIX as _UNMIX
from tiling.config import TissueConfig
from tiling.errors import MissingMppError
from tiling.slide import opened_slide
from tiling.tissue import detect_tissue, read_thumbnail


@dataclass(frozen=True)
class SlideView:
    """One slide seen at low resolution.

    Attributes
    ----------
    path : Path
        The slide file.
    rgb : np.ndarray
        ``[H, W, 3]`` uint8 thumbnail.
    intensity : np.ndarray
        ``[H, W]`` float32 stain intensity (optical-density units), 0 on glass.
    tissue_mask : np.ndarray
        ``[H, W]`` bool tissue mask.
    spacing_um : tuple[float, float]
        Effective ``(x, y)`` µm per view pixel.
    mpp_level0_um : float
        µm per level-0 pixel of the slide.
    dimensions_level0 : tuple[int, int]
        Level-0 ``(width, height)`` of the slide, pixels.
    """

    path: Path
    rgb: np.ndarray
    intensity: np.ndarray
    tissue_mask: np.ndarray
    spacing_um: tuple[float, float]
    mpp_level0_um: float
    dimensions_level0: tuple[int, int]


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` float32 optical density per channel of uint8 ``rgb``, 0 for white, about 5.5 for black."""
    return cv2.LUT(np.ascontiguousarray(rgb, dtype=np.uint8), OD_OF_UINT8)


def stain_intensity(rgb: np.ndarray, channel: str) -> np.ndarray:
    """``[H, W]`` float32 stain amount: OD summed over RGB, or the haematoxylin concentration."""
    weights = {"od": np.ones(3), "haematoxylin": _UNMIX[:, 0]}.get(channel)
    if weights is None:
        raise ValueError(f"unknown channel {channel!r}: expected 'od' or 'haematoxylin'")
    amount = cv2.transform(optical_density(rgb), weights.astype(np.float32).reshape(1, 3))
    return amount if channel == "od" else np.clip(amount, 0.0, None)


def dilate_px(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """``mask`` grown by ``radius_px`` (Euclidean), in time independent of the radius.

    A morphological dilation with a disc costs in proportion to its radius:
    seconds for the 40-px margins of a 2 µm/px whole-slide view. A distance
    transform gives the same disc growth in one pass.
    """
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance <= radius_px


def _background_free(intensity: np.ndarray, tissue_mask: np.ndarray, dilation_px: int) -> np.ndarray:
    """Subtract the glass level and zero everything further than ``dilation_px`` from tissue."""
    glass = intensity[~tissue_mask]
    level = float(np.median(glass)) if glass.size else 0.0
    near_tissue = dilate_px(tissue_mask, dilation_px)
    return np.where(near_tissue, np.clip(intensity - level, 0.0, None), 0.0).astype(np.float32)


def render_view(
    path: Path | str,
    view_mpp_um: float,
    channel: str = "od",
    mask_dilation_um: float = 80.0,
    mpp_override_um: float | None = None,
    min_od_above_glass: float | None = 0.05,
    mpp_replace_um: float | None = None,
) -> SlideView:
    """Read the whole slide at ``view_mpp_um`` and derive its registration channel and tissue mask.

    The mask counts stained (saturated) and absorbing pixels as tissue (see
    :func:`tiling.tissue.detect_tissue`), so pale IHC is found. The level-0
    pixel size is ``mpp_replace_um`` if given, else the file's, else
    ``mpp_override_um``: as in tiling, an override only fills a gap.

    Raises
    ------
    MissingMppError
        When the file records no pixel size and neither ``mpp_override_um`` nor ``mpp_replace_um`` is given.
    """
    path = Path(path)
    with opened_slide(path) as backend:
        mpp_um = mpp_replace_um or backend.mpp_um or mpp_override_um
        if mpp_um is None:
            raise MissingMppError(path, "no pixel size in the file; pass fixed_mpp_um / moving_mpp_um")
        dimensions_level0 = backend.level_dimensions[0]
        thumbnail = read_thumbnail(backend, mpp_um, view_mpp_um)
    height, width = thumbnail.rgb.shape[:2]
    extent_x, extent_y = thumbnail.covered_level0_px
    spacing_um = (extent_x * mpp_um / width, extent_y * mpp_um / height)
    tissue_mask = detect_tissue(thumbnail, TissueConfig(min_od_above_glass=min_od_above_glass))
    dilation_px = round(mask_dilation_um / view_mpp_um)
    intensity = _background_free(stain_intensity(thumbnail.rgb, channel), tissue_mask, dilation_px)
    return SlideView(path, thumbnail.rgb, intensity, tissue_mask, spacing_um, mpp_um, dimensions_level0)
