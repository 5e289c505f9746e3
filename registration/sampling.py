"""Sample a slide at arbitrary level-0 positions: how tiles and refinement patches follow a registration.

Positions are continuous level-0 pixel coordinates in the convention of the
whole package: pixel ``k`` spans ``[k, k + 1)``, so its centre is ``k + 0.5``
and ``(x, y) * mpp`` is the point in µm from the slide's corner.
"""

from __future__ import annotations

import cv2
import numpy as np

from tiling.slide import SlideBackend, read_region

_GLASS = (255, 255, 255)
_READ_MARGIN_PX = 2  # bilinear sampling needs the neighbours of the outermost positions


def choose_level(backend: SlideBackend, mpp_level0_um: float, out_mpp_um: float) -> int:
    """The coarsest level at least as fine as ``out_mpp_um`` (1 % slack), else level 0."""
    level_mpps = [mpp_level0_um * d for d in backend.level_downsamples]
    usable = [level for level, mpp in enumerate(level_mpps) if mpp <= out_mpp_um * 1.01]
    return max(usable, key=level_mpps.__getitem__) if usable else 0


def sample_slide(backend: SlideBackend, mpp_level0_um: float, xy_level0: np.ndarray, out_mpp_um: float) -> np.ndarray:
    """``[H, W, 3]`` RGB at the ``[H, W, 2]`` level-0 positions, for output pixels of about ``out_mpp_um``.

    The bounding box of the positions is read once from :func:`choose_level`,
    area-shrunk to about ``out_mpp_um`` when that level is finer (so the
    bilinear sampling that follows does not alias), then sampled. Positions
    off the slide are glass (white).
    """
    level = choose_level(backend, mpp_level0_um, out_mpp_um)
    level_width, level_height = backend.level_dimensions[level]
    edges = xy_level0 / backend.level_downsamples[level]
    x0, y0 = np.maximum(np.floor(edges.reshape(-1, 2).min(axis=0)).astype(int) - _READ_MARGIN_PX, 0)
    x1 = min(int(np.ceil(edges[..., 0].max())) + _READ_MARGIN_PX, level_width)
    y1 = min(int(np.ceil(edges[..., 1].max())) + _READ_MARGIN_PX, level_height)
    if x1 <= x0 or y1 <= y0:
        return np.full((*xy_level0.shape[:2], 3), 255, np.uint8)
    region = read_region(backend, level, (int(x0), int(y0), x1 - x0, y1 - y0))
    scale = min(1.0, mpp_level0_um * backend.level_downsamples[level] / out_mpp_um)
    if scale < 0.9:
        size = (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))
        region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
    factors = np.array([region.shape[1], region.shape[0]]) / np.array([x1 - x0, y1 - y0])
    source = ((edges - np.array([x0, y0])) * factors - 0.5).astype(np.float32)  # remap samples pixel centres
    return cv2.remap(
        region, source[..., 0], source[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=_GLASS
    )


def interpolate_nodes(nodes: np.ndarray, size: int) -> np.ndarray:
    """``[size, size, 2]`` float64 bilinear interpolation of ``[n, n, 2]`` values on nodes spanning the same corners.

    Node ``(0, 0)`` sits on output pixel ``(0, 0)`` and node ``(n-1, n-1)`` on
    ``(size-1, size-1)``. Used to spread a handful of exactly mapped points
    over every pixel of a tile or patch: mapping each pixel through elastix
    would cost ~6 µs a point.
    """
    count = nodes.shape[0]
    position = np.arange(size) * (count - 1) / max(size - 1, 1)
    lower = np.minimum(position.astype(np.int64), count - 2)
    upper_weight = position - lower
    weights = np.zeros((size, count))
    weights[np.arange(size), lower] = 1.0 - upper_weight
    weights[np.arange(size), lower + 1] = upper_weight
    # out[i, j] = Σ_n Σ_m W[i, n] nodes[n, m] W[j, m], as two small matrix products per coordinate (a plain
    # einsum of the three operands loops over all four indices at once: ~170 ms for a 256-px patch). OpenCV's
    # gemm, not NumPy's: a multi-threaded BLAS wakes its threads for these, which costs more than it saves and
    # competes with the threads that measure refinement anchors.
    planes = [np.ascontiguousarray(nodes[..., channel], dtype=np.float64) for channel in range(nodes.shape[-1])]
    return np.stack(
        [
            cv2.gemm(cv2.gemm(weights, plane, 1.0, None, 0.0), weights, 1.0, None, 0.0, flags=cv2.GEMM_2_T)
            for plane in planes
        ],
        axis=-1,
    )
