"""The QC picture of a registered pair: checkerboards of the fixed and the moving slide.

Each panel alternates squares of the fixed view and of the moving view
resampled onto the fixed view's grid; where they are aligned, structures run
across square borders without a break. Green outlines the fixed tissue,
magenta the moving tissue. "as scanned" shows the slides overlaid in µm
without a transform, "registered" with it.
"""

from __future__ import annotations

import cv2
import numpy as np

_FIXED_COLOUR = (0, 170, 0)
_MOVING_COLOUR = (200, 0, 200)
_CAPTION_PX = 22
_MAX_PANEL_EDGE_PX = 1000


def _png_bytes(rgb: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode a QC picture")
    return png.tobytes()


def checkerboard(fixed_rgb: np.ndarray, moving_rgb: np.ndarray, squares: int = 8) -> np.ndarray:
    """``[H, W, 3]`` alternating squares of two equal-shape images, ``squares`` along the shorter edge."""
    height, width = fixed_rgb.shape[:2]
    size = max(1, min(height, width) // squares)
    rows, cols = np.mgrid[0:height, 0:width]
    use_moving = ((rows // size + cols // size) % 2).astype(bool)
    return np.where(use_moving[..., None], moving_rgb, fixed_rgb)


def _outline(picture: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, colour, 1)


def _panel(title: str, fixed_rgb: np.ndarray, fixed_mask: np.ndarray, moving_rgb: np.ndarray, moving_mask: np.ndarray):
    picture = np.ascontiguousarray(checkerboard(fixed_rgb, moving_rgb))
    _outline(picture, fixed_mask, _FIXED_COLOUR)
    _outline(picture, moving_mask, _MOVING_COLOUR)
    longest = max(picture.shape[:2])
    if longest > _MAX_PANEL_EDGE_PX:
        factor = _MAX_PANEL_EDGE_PX / longest
        picture = cv2.resize(picture, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    band = np.full((_CAPTION_PX, picture.shape[1], 3), 255, np.uint8)
    cv2.putText(band, title, (4, _CAPTION_PX - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([band, picture])


def render_registration_qc(
    fixed_rgb: np.ndarray,
    fixed_mask: np.ndarray,
    panels: list[tuple[str, np.ndarray, np.ndarray]],
) -> bytes:
    """PNG bytes: one checkerboard panel per ``(title, moving_rgb, moving_mask)``, side by side.

    Every image is on the fixed view's grid: ``fixed_rgb`` and each
    ``moving_rgb`` ``[H, W, 3]`` uint8, the masks ``[H, W]`` bool.
    """
    drawn = [_panel(title, fixed_rgb, fixed_mask, rgb, mask) for title, rgb, mask in panels]
    height = max(p.shape[0] for p in drawn)
    gap = np.full((height, 8, 3), 255, np.uint8)
    padded = [np.vstack([p, np.full((height - p.shape[0], p.shape[1], 3), 255, np.uint8)]) for p in drawn]
    row = np.hstack([part for p in padded for part in (p, gap)][:-1])
    return _png_bytes(row)


def render_tile_montage(tiles: np.ndarray, condition_names: list[str]) -> bytes:
    """PNG bytes: one row per condition of the same tiles ``[condition, k, H, W, 3]``, named on the left.

    Aligned tiles show the same cells in every row, only in other colours.
    """
    height = tiles.shape[2]
    label_px = 8 + 9 * max(len(name) for name in condition_names)
    rows = []
    for name, row_tiles in zip(condition_names, tiles, strict=True):
        label = np.full((height, label_px, 3), 255, np.uint8)
        cv2.putText(label, name, (4, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        gap = np.full((height, 4, 3), 255, np.uint8)
        rows.append(np.hstack([label, *[part for tile in row_tiles for part in (tile, gap)]]))
    picture = np.vstack([part for row in rows for part in (row, np.full((4, row.shape[1], 3), 255, np.uint8))])
    return _png_bytes(picture)
