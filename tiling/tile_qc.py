"""Per-tile quality filters on the pixels actually read.

The tissue mask is coarse; these catch what it misses at tile scale: tiles
that are mostly glass, mostly black (scanner artefacts, folded tissue
shadows) or out of focus.
"""

from __future__ import annotations

import cv2
import numpy as np

from tiling.config import TileQCConfig

REJECTION_REASONS = ("white", "black", "blur")


def _fraction_in_range(tile: np.ndarray, low: int, high: int) -> float:
    """Share of pixels whose three channels all lie in ``[low, high]`` (OpenCV: ~50× numpy's axis reductions)."""
    if low > high:
        return 0.0
    inside = cv2.inRange(tile, (low, low, low), (high, high, high))
    return cv2.countNonZero(inside) / inside.size


def rejection_reason(tile: np.ndarray, config: TileQCConfig) -> str | None:
    """Return why ``tile`` (``[H, W, 3]`` uint8, contiguous) is rejected, or ``None`` if it passes."""
    if _fraction_in_range(tile, config.white_level + 1, 255) > config.max_white_fraction:
        return "white"
    if _fraction_in_range(tile, 0, config.black_level - 1) > config.max_black_fraction:
        return "black"
    if config.min_laplacian_variance > 0:
        gray = cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY)
        _, deviation = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))  # |values| <= 8 * 255 fit int16
        if float(deviation[0, 0]) ** 2 < config.min_laplacian_variance:
            return "blur"
    return None
