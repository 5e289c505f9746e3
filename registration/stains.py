"""Stain vectors for colour deconvolution of brightfield slides.

Beer–Lambert: a pixel's optical density (OD, ``-log`` of transmitted light
per RGB channel) is the sum of each stain's concentration times that stain's
OD vector, so with one vector per row ``od = concentrations @ STAINS_OD`` and
``concentrations = od @ UNMIX``.
"""

from __future__ import annotations

import numpy as np

# Ruifrok & Johnston (2001) optical-density vectors of haematoxylin, eosin and DAB, one per row, unit length.
# On H&E slides the third row collects what the two stains do not explain (the residual).
STAINS_OD = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
STAINS_OD /= np.linalg.norm(STAINS_OD, axis=1, keepdims=True)
UNMIX = np.linalg.inv(STAINS_OD)  # optical density [.., 3] @ UNMIX -> stain concentrations
# Optical density of each uint8 transmitted-light value, -log((v + 1) / 256): 0 for white, about 5.5 for black.
# For cv2.LUT, which maps a [H, W, 3] uint8 image through it far faster than computing the log per pixel.
OD_OF_UINT8 = (-np.log((np.arange(256) + 1.0) / 256.0)).astype(np.float32)
