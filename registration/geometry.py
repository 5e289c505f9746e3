"""Conversions between view pixels, µm and level-0 pixels.

Physical coordinates are µm from the top-left corner of a slide's level 0;
level-0 pixel coordinates ``(x, y)`` are continuous, so ``(x, y) * mpp_um``
is the same point in µm. View pixel ``(row, col)`` has its centre at
``((col + 0.5) * spacing_x, (row + 0.5) * spacing_y)`` µm.
"""

from __future__ import annotations

import cv2
import numpy as np


def pixel_centres_um(shape: tuple[int, int], spacing_um: tuple[float, float]) -> np.ndarray:
    """``[H * W, 2]`` (x, y) µm of every pixel centre of an ``[H, W]`` view, row by row."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.stack([(cols.ravel() + 0.5) * spacing_um[0], (rows.ravel() + 0.5) * spacing_um[1]], axis=1)


def um_to_view_px(xy_um: np.ndarray, spacing_um: tuple[float, float]) -> np.ndarray:
    """``[N, 2]`` µm to continuous (col, row) view coordinates whose integers are pixel centres."""
    return xy_um / np.asarray(spacing_um) - 0.5


def resize_view(
    image: np.ndarray, spacing_um: tuple[float, float], mpp_um: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """Area-resample a view ``[H, W, ...]`` to about ``mpp_um``; returns it with its effective (x, y) spacing."""
    height, width = image.shape[:2]
    new_width = max(1, round(width * spacing_um[0] / mpp_um))
    new_height = max(1, round(height * spacing_um[1] / mpp_um))
    resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_AREA)
    return resized, (spacing_um[0] * width / new_width, spacing_um[1] * height / new_height)


def sample_view(
    image: np.ndarray, spacing_um: tuple[float, float], xy_um: np.ndarray, shape: tuple[int, int], fill: float = 0
) -> np.ndarray:
    """Bilinearly sample ``image`` at ``[H * W, 2]`` µm points laid out as ``shape``; ``fill`` outside it."""
    px = um_to_view_px(xy_um, spacing_um).astype(np.float32).reshape(*shape, 2)
    border = {"borderMode": cv2.BORDER_CONSTANT, "borderValue": (fill,) * 4}
    return cv2.remap(image, px[..., 0], px[..., 1], cv2.INTER_LINEAR, **border)
