"""Cut the same tissue tiles out of every condition of a registered study.

Tiles are laid on the reference slide's tissue with the tiling grid of
:mod:`tiling` (so the reference's tiles are the tile store's tiles). Each
tile's output pixels are points of the reference; the registration maps them
onto every other condition, whose pixels are resampled there. A tile is
therefore not an axis-aligned crop of a moving slide: it follows the
rotation, scale and elastic deformation the registration found, and shows the
same tissue as the reference tile, pixel for pixel, at the same µm/px.

Mapping every one of a tile's 50,176 pixels through elastix would take a
third of a second a tile; instead ``nodes_per_side``² nodes per tile are
mapped and the positions in between interpolated bilinearly (the deformation
varies over hundreds of µm, the nodes are ~16 µm apart, so the
interpolation error is ~0.03 µm).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from tiling.config import TilingConfig, TissueConfig
from tiling.slide import SlideBackend, opened_slide
from tiling.tile_slide import plan_tiles
from tiling.tissue import detect_tissue, read_thumbnail

_GLASS = (255, 255, 255)
_READ_MARGIN_PX = 2  # bilinear sampling needs the neighbours of the outermost positions


class PointMapping(Protocol):
    """Anything that maps reference level-0 pixels ``[N, 2]`` to a condition's level-0 pixels."""

    def map_points(self, xy: np.ndarray) -> np.ndarray: ...


class IdentityMapping:
    """The reference condition's mapping onto itself."""

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64).reshape(-1, 2).copy()


@dataclass(frozen=True)
class ReferenceTiles:
    """Tiles laid on the reference slide.

    Attributes
    ----------
    top_left_xy
        ``[N, 2]`` float64 top-left corner of each tile, reference level-0 px.
    grid
        ``[N, 2]`` int32 ``(col, row)`` of each tile in the reference's tile grid.
    tile_size_level0
        Tile edge in reference level-0 px.
    tile_size_px
        Tile edge in output pixels.
    mpp_um
        µm per output pixel (the tiling plan's effective mpp).
    """

    top_left_xy: np.ndarray
    grid: np.ndarray
    tile_size_level0: float
    tile_size_px: int
    mpp_um: float

    def __len__(self) -> int:
        return len(self.top_left_xy)

    def subset(self, keep: np.ndarray) -> ReferenceTiles:
        """The tiles where boolean ``keep`` is true, in the same order."""
        return ReferenceTiles(
            self.top_left_xy[keep], self.grid[keep], self.tile_size_level0, self.tile_size_px, self.mpp_um
        )

    def centres(self) -> np.ndarray:
        """``[N, 2]`` tile centres, reference level-0 px."""
        return self.top_left_xy + self.tile_size_level0 / 2

    def nodes(self, per_side: int) -> np.ndarray:
        """``[N, per_side, per_side, 2]`` reference level-0 px of the interpolation nodes of each tile.

        Nodes sit on output pixel centres, the first and last on the tile's
        first and last pixels; ``[..., i, j, :]`` is row ``i``, column ``j``.
        """
        pixel_level0 = self.tile_size_level0 / self.tile_size_px
        offsets = (0.5 + np.linspace(0.0, self.tile_size_px - 1.0, per_side)) * pixel_level0
        ox, oy = np.meshgrid(offsets, offsets)
        return self.top_left_xy[:, None, None, :] + np.stack([ox, oy], axis=-1)[None]


def reference_tiles(path: Path | str, mpp_um: float, config: TilingConfig) -> ReferenceTiles:
    """Lay ``config``'s tile grid on the tissue of the reference slide at ``path``."""
    with opened_slide(path) as backend:
        tile_plan = plan_tiles(Path(path), backend, mpp_um, config)
    grid = np.stack([tile_plan.grid.cols, tile_plan.grid.rows], axis=1).astype(np.int32)
    resolution = tile_plan.resolution
    return ReferenceTiles(
        tile_plan.coordinates.astype(np.float64), grid, resolution.tile_size_level0, resolution.tile_size_px,
        resolution.effective_mpp_um,
    )


def map_tiles(mapping: PointMapping, tiles: ReferenceTiles, nodes_per_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Images on one condition of each tile's top-left corner ``[N, 2]`` and nodes ``[N, n, n, 2]``, level-0 px.

    One call of ``mapping`` for all points: elastix's per-call cost is paid once.
    """
    count = len(tiles)
    nodes = tiles.nodes(nodes_per_side)
    mapped = mapping.map_points(np.concatenate([tiles.top_left_xy, nodes.reshape(-1, 2)]))
    return mapped[:count], mapped[count:].reshape(nodes.shape)


def tissue_under_tiles(
    slide_path: Path | str, mpp_um: float, nodes_xy: np.ndarray, tissue: TissueConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Share of each tile's nodes on the slide's tissue mask ``[N]`` float32, and whether all lie on the slide ``[N]``."""
    with opened_slide(slide_path) as backend:
        width, height = backend.level_dimensions[0]
        thumbnail = read_thumbnail(backend, mpp_um, tissue.mask_mpp_um)
    mask = detect_tissue(thumbnail, tissue)
    inside = np.all((nodes_xy >= 0) & (nodes_xy < np.array([width, height])), axis=(1, 2, 3))
    covered_x, covered_y = thumbnail.covered_level0_px or (width, height)
    mask_xy = nodes_xy * np.array([mask.shape[1] / covered_x, mask.shape[0] / covered_y])
    cols = np.clip(mask_xy[..., 0].astype(np.int64), 0, mask.shape[1] - 1)
    rows = np.clip(mask_xy[..., 1].astype(np.int64), 0, mask.shape[0] - 1)
    fraction = mask[rows, cols].mean(axis=(1, 2))
    return np.where(inside, fraction, 0.0).astype(np.float32), inside


def _interpolation_weights(tile_size_px: int, nodes_per_side: int) -> np.ndarray:
    """``[tile_size_px, nodes_per_side]`` linear weights from the nodes to every pixel along one axis."""
    position = np.arange(tile_size_px) * (nodes_per_side - 1) / max(tile_size_px - 1, 1)
    lower = np.minimum(position.astype(np.int64), nodes_per_side - 2)
    upper_weight = position - lower
    weights = np.zeros((tile_size_px, nodes_per_side))
    weights[np.arange(tile_size_px), lower] = 1.0 - upper_weight
    weights[np.arange(tile_size_px), lower + 1] = upper_weight
    return weights


def pixel_positions(nodes_xy: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[T, T, 2]`` level-0 position of every output pixel of one tile, from its ``[n, n, 2]`` nodes."""
    return np.einsum("in,nmc,jm->ijc", weights, nodes_xy, weights)


def _read_clipped(backend: SlideBackend, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Level pixels ``[y0:y1, x0:x1]``, glass where the box leaves the level."""
    width, height = backend.level_dimensions[level]
    out = np.full((y1 - y0, x1 - x0, 3), 255, dtype=np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 > cx0 and cy1 > cy0:
        region = backend.read_regions(level, [(cx0, cy0, cx1 - cx0, cy1 - cy0)])[0]
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = region
    return out


def _choose_level(backend: SlideBackend, mpp_um: float, out_mpp_um: float) -> int:
    """The coarsest level still at least as fine as the output (within 5 %), so nothing is upsampled needlessly."""
    level_mpps = [mpp_um * d for d in backend.level_downsamples]
    usable = [level for level, mpp in enumerate(level_mpps) if mpp <= out_mpp_um * 1.05]
    return max(usable, key=level_mpps.__getitem__) if usable else 0


def resample_tile(
    backend: SlideBackend, level: int, level_scale: float, positions_level0: np.ndarray
) -> np.ndarray:
    """Sample the slide at ``[T, T, 2]`` level-0 positions; ``level_scale`` = output px per level px (≤ 1).

    The region under the tile is read from ``level`` and, when it is finer
    than the output, first area-averaged to about the output's pixel size, so
    the bilinear sampling that follows does not alias.
    """
    positions = positions_level0 / backend.level_downsamples[level]
    x0, y0 = np.floor(positions.min(axis=(0, 1))).astype(int) - _READ_MARGIN_PX
    x1, y1 = np.ceil(positions.max(axis=(0, 1))).astype(int) + _READ_MARGIN_PX + 1
    region = _read_clipped(backend, level, x0, y0, x1, y1)
    scale_x = scale_y = 1.0
    if level_scale < 0.8:
        width = max(1, round(region.shape[1] * level_scale))
        height = max(1, round(region.shape[0] * level_scale))
        scale_x, scale_y = width / region.shape[1], height / region.shape[0]
        region = cv2.resize(region, (width, height), interpolation=cv2.INTER_AREA)
    map_x = ((positions[..., 0] - x0 + 0.5) * scale_x - 0.5).astype(np.float32)
    map_y = ((positions[..., 1] - y0 + 0.5) * scale_y - 0.5).astype(np.float32)
    return cv2.remap(region, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=_GLASS)


def extract_tiles(
    slide_path: Path | str,
    mpp_um: float,
    nodes_xy: np.ndarray,
    tile_size_px: int,
    out_mpp_um: float,
    *,
    batch_size: int = 256,
    threads: int = 2,
) -> Iterator[np.ndarray]:
    """Yield the tiles whose ``[N, n, n, 2]`` nodes are given, ``[<=batch_size, T, T, 3]`` uint8 at a time, in order."""
    weights = _interpolation_weights(tile_size_px, nodes_xy.shape[1])
    with opened_slide(slide_path) as backend, ThreadPoolExecutor(threads, thread_name_prefix="extract") as pool:
        level = _choose_level(backend, mpp_um, out_mpp_um)
        level_scale = mpp_um * backend.level_downsamples[level] / out_mpp_um

        def one(nodes: np.ndarray) -> np.ndarray:
            return resample_tile(backend, level, level_scale, pixel_positions(nodes, weights))

        for start in range(0, len(nodes_xy), batch_size):
            yield np.stack(list(pool.map(one, nodes_xy[start : start + batch_size])))
