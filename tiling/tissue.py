"""Find tissue on a low-resolution view of a slide, classically.

Tissue is saturated (stained) and not black; glass is grey-white. The
saturation threshold is Otsu's, but never below a floor, so a blank slide
(pure noise) yields an empty mask instead of a random one. Optionally
(``min_od_above_glass``) tissue is also what absorbs more light than the
glass, whatever its hue: pale IHC is grey-brown, hardly saturated. Marker ink is
removed by hue: green and strongly saturated blue are never H&E stains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from tiling.config import TissueConfig
from tiling.slide import SlideBackend, read_region

_OUTPUT_BLOCK_PX = 1024  # thumbnail pixels produced per region read
# OpenCV hue is 0–179. H&E stains lie in magenta/purple/pink (~120–179 and 0–15).
_GREEN_INK_HUE = (35, 90)
_BLUE_INK_HUE = (95, 125)
_BLUE_INK_MIN_SATURATION = 100


@dataclass(frozen=True)
class Thumbnail:
    """A downsampled RGB view ``[H, W, 3]`` of a whole slide at ``mpp_um`` per pixel.

    ``covered_level0_px`` is the ``(width, height)`` of level 0 the pixels
    really span: rounding the view to whole pixels leaves out up to half a
    view pixel at the right and bottom edges. Code that needs exact
    positions (registration) divides it by the view size for the true spacing.
    """

    rgb: np.ndarray
    mpp_um: float
    covered_level0_px: tuple[float, float] | None = None


def read_thumbnail(backend: SlideBackend, mpp_level0_um: float, thumbnail_mpp_um: float) -> Thumbnail:
    """Render the slide at about ``thumbnail_mpp_um`` from the best level, block by block.

    Reading the chosen level in blocks keeps memory bounded. Every block is a
    whole number of level pixels, the same number for every block, shrunk to
    ``_OUTPUT_BLOCK_PX`` thumbnail pixels, so one scale holds across the whole
    thumbnail: rounding each block's footprint to whole level pixels instead
    would shift and stretch blocks by up to half a level pixel each (about a
    micrometre at 4 µm/px, which registration on such views would inherit).
    That scale differs from the one asked for by at most half a level pixel
    per block (under 0.05 % when shrinking); ``covered_level0_px`` gives the
    exact extent. Beyond the slide's edge the last blocks are glass.
    """
    level_mpps = [mpp_level0_um * d for d in backend.level_downsamples]
    usable = [lvl for lvl, mpp in enumerate(level_mpps) if mpp <= thumbnail_mpp_um]
    level = (
        max(usable, key=level_mpps.__getitem__) if usable else min(range(len(level_mpps)), key=level_mpps.__getitem__)
    )
    level_width, level_height = backend.level_dimensions[level]
    block_level_px = max(1, round(_OUTPUT_BLOCK_PX * thumbnail_mpp_um / level_mpps[level]))
    scale = _OUTPUT_BLOCK_PX / block_level_px  # thumbnail px per level px, exactly
    out_width, out_height = max(1, round(level_width * scale)), max(1, round(level_height * scale))
    thumbnail = np.empty((out_height, out_width, 3), dtype=np.uint8)
    for out_y in range(0, out_height, _OUTPUT_BLOCK_PX):
        for out_x in range(0, out_width, _OUTPUT_BLOCK_PX):
            rows, cols = min(_OUTPUT_BLOCK_PX, out_height - out_y), min(_OUTPUT_BLOCK_PX, out_width - out_x)
            x0, y0 = out_x // _OUTPUT_BLOCK_PX * block_level_px, out_y // _OUTPUT_BLOCK_PX * block_level_px
            # The level pixels these output pixels cover (edge blocks: up to a pixel of glass past the slide).
            need_w, need_h = min(block_level_px, math.ceil(cols / scale)), min(block_level_px, math.ceil(rows / scale))
            block = np.full((need_h, need_w, 3), 255, dtype=np.uint8)
            width, height = min(need_w, level_width - x0), min(need_h, level_height - y0)
            if width > 0 and height > 0:
                block[:height, :width] = read_region(backend, level, (x0, y0, width, height))
            # fx/fy, not a target size, so that OpenCV maps with exactly this scale in every block.
            shrunk = cv2.resize(block, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            thumbnail[out_y : out_y + rows, out_x : out_x + cols] = shrunk[:rows, :cols]
    downsample = backend.level_downsamples[level]
    covered = (out_width / scale * downsample, out_height / scale * downsample)
    return Thumbnail(rgb=thumbnail, mpp_um=thumbnail_mpp_um, covered_level0_px=covered)


def _pixels(area_um2: float, mpp_um: float) -> float:
    return area_um2 / (mpp_um * mpp_um)


def _ink_mask(hsv: np.ndarray) -> np.ndarray:
    hue, saturation = hsv[..., 0], hsv[..., 1]
    green = (hue >= _GREEN_INK_HUE[0]) & (hue <= _GREEN_INK_HUE[1]) & (saturation > 40)
    blue = (hue >= _BLUE_INK_HUE[0]) & (hue <= _BLUE_INK_HUE[1]) & (saturation > _BLUE_INK_MIN_SATURATION)
    return green | blue


def _remove_small_components(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area_px
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_hole_area_px: float) -> np.ndarray:
    holes = ~mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=4)
    height, width = mask.shape
    touches_border = (
        (stats[:, cv2.CC_STAT_LEFT] == 0)
        | (stats[:, cv2.CC_STAT_TOP] == 0)
        | (stats[:, cv2.CC_STAT_LEFT] + stats[:, cv2.CC_STAT_WIDTH] == width)
        | (stats[:, cv2.CC_STAT_TOP] + stats[:, cv2.CC_STAT_HEIGHT] == height)
    )
    fill = (stats[:, cv2.CC_STAT_AREA] <= max_hole_area_px) & ~touches_border
    fill[0] = False
    return mask | (fill[labels] & holes)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 ``values``; 255 (nothing above it) when there are none."""
    if not values.size:
        return 255.0
    return float(cv2.threshold(values.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])


_OD_LEVELS_PER_UNIT = 100.0  # optical density (summed over RGB) as uint8: 0.01 a level, up to 2.55
_PURE_WHITE_OD = 0.03  # about (254, 254, 254): a canvas, not scanned glass


def _absorbing(rgb: np.ndarray, min_od_above_glass: float) -> np.ndarray:
    """Pixels that absorb clearly more light than the glass, whatever their colour.

    The glass level is the 5th percentile of optical density (the brightest
    area: glass on most slides, the air spaces of a field filled with lung),
    leaving out pure white: the canvas around a resampled or padded slide is
    brighter than any scanned glass and would make real glass count as tissue.
    No Otsu threshold: on a pale IHC slide it falls between the pale tissue
    and its few dark nuclei, and half the tissue was lost.
    """
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0).sum(axis=-1)
    od = cv2.medianBlur(np.clip(od * _OD_LEVELS_PER_UNIT, 0, 255).astype(np.uint8), 5)
    scanned = od[od >= _PURE_WHITE_OD * _OD_LEVELS_PER_UNIT]
    glass = float(np.percentile(scanned, 5)) if scanned.size >= 0.1 * od.size else 0.0
    return od > glass + min_od_above_glass * _OD_LEVELS_PER_UNIT


def detect_tissue(thumbnail: Thumbnail, config: TissueConfig) -> np.ndarray:
    """Return a boolean tissue mask with the thumbnail's shape ``[H, W]``."""
    hsv = cv2.cvtColor(thumbnail.rgb, cv2.COLOR_RGB2HSV)
    saturation = cv2.medianBlur(np.ascontiguousarray(hsv[..., 1]), 5)
    candidates = hsv[..., 2] > config.max_value_black
    if config.suppress_pen:
        ink = cv2.dilate(_ink_mask(hsv).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        candidates &= ~ink
    # Otsu over candidate pixels only: saturated ink would otherwise pull the threshold above the stain.
    threshold = max(_otsu(saturation[candidates]), float(config.min_saturation))
    mask = (saturation > threshold) & candidates
    if config.min_od_above_glass is not None:
        mask |= _absorbing(thumbnail.rgb, config.min_od_above_glass) & candidates
    radius = round(config.closing_um / thumbnail.mpp_um)
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    mask = _fill_small_holes(mask, _pixels(config.max_hole_area_um2, thumbnail.mpp_um))
    return _remove_small_components(mask, _pixels(config.min_component_area_um2, thumbnail.mpp_um))
