"""Tile QC rejects glass, black and out-of-focus tiles, and keeps real tissue."""

from __future__ import annotations

import cv2
import numpy as np

from tests.conftest import cmu_rgb
from tiling.config import TileQCConfig
from tiling.tile_qc import rejection_reason

CONFIG = TileQCConfig()


def _tissue_tile() -> np.ndarray:
    return np.ascontiguousarray(cmu_rgb()[1344:1568, 1344:1568])


def test_real_tissue_passes():
    assert rejection_reason(_tissue_tile(), CONFIG) is None


def test_glass_black_and_blur_are_rejected_with_their_reason():
    tile = _tissue_tile()
    glass = np.full_like(tile, 240)
    glass[:10] = tile[:10]  # a sliver of tissue is not enough
    black = tile.copy()
    black[:150] = 5
    blurred = cv2.GaussianBlur(tile, (0, 0), 3)
    assert rejection_reason(glass, CONFIG) == "white"
    assert rejection_reason(black, CONFIG) == "black"
    assert rejection_reason(blurred, CONFIG) == "blur"
    assert rejection_reason(blurred, CONFIG.model_copy(update={"min_laplacian_variance": 0})) is None
