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


def rejection_reason(tile: np.ndarray, config: TileQCConfig) -> str | None:
    """Return why ``tile`` (``[H, W, 3]`` uint8) is rejected, or ``None`` if it passes."""
    if (tile.min(axis=2) > config.white_level).mean() > config.max_white_fraction:
        return "white"
    if (tile.max(axis=2) < config.black_level).mean() > config.max_black_fraction:
        return "black"
    if config.min_laplacian_variance > 0:
        gray = cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY)
        if cv2.Laplacian(gray, cv2.CV_64F).var() < config.min_laplacian_variance:
            return "blur"
    return None
