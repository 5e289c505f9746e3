"""The QC picture of a slide: thumbnail, tissue outline, and the tiles kept.

A person checking a run of thousands of slides looks at pictures, not
numbers: green contours show the tissue mask, yellow squares the tiles that
went into the store.
"""

from __future__ import annotations

import cv2
import numpy as np

from tiling.tissue import Thumbnail

_MAX_EDGE_PX = 2000
_MASK_COLOUR = (0, 200, 0)
_TILE_COLOUR = (255, 200, 0)


def render_qc_picture(
    thumbnail: Thumbnail,
    tissue_mask: np.ndarray,
    coords_level0: np.ndarray,
    tile_size_level0: float,
    mpp_level0_um: float,
) -> bytes:
    """Return a PNG of the slide with its mask contour and tile squares drawn on it."""
    picture = thumbnail.rgb.copy()
    contours, _ = cv2.findContours(tissue_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, _MASK_COLOUR, 1)
    scale = mpp_level0_um / thumbnail.mpp_um  # thumbnail px per level-0 px
    size = max(1, round(tile_size_level0 * scale))
    for x, y in np.round(coords_level0 * scale).astype(int):
        cv2.rectangle(picture, (x, y), (x + size - 1, y + size - 1), _TILE_COLOUR, 1)
    longest = max(picture.shape[:2])
    if longest > _MAX_EDGE_PX:
        factor = _MAX_EDGE_PX / longest
        picture = cv2.resize(picture, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode the QC picture")
    return png.tobytes()
