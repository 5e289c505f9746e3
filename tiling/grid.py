"""Lay a regular grid of whole tiles over the slide and keep the cells on tissue.

The grid lives on the chosen pyramid level in steps of ``tile_size_level``
pixels, starting at the slide's origin; only tiles lying entirely inside the
level are laid. Coordinates are then reported in level-0 pixels, the frame
every other tool (OpenSlide, QuPath, the registration) shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiling.resolution import ResolutionPlan


@dataclass(frozen=True)
class TileGrid:
    """Grid cells kept for tiling, in reading order.

    Attributes
    ----------
    rows, cols
        ``[N]`` int32 grid indices of each kept cell.
    tissue_fraction
        ``[N]`` float32 share of each cell the tissue mask covers.
    shape
        ``(rows, cols)`` of the full grid.
    """

    rows: np.ndarray
    cols: np.ndarray
    tissue_fraction: np.ndarray
    shape: tuple[int, int]

    def __len__(self) -> int:
        return len(self.rows)


def cell_tissue_fractions(
    mask: np.ndarray, mask_px_per_level_px: float, grid_shape: tuple[int, int], step_level: int
) -> np.ndarray:
    """Mean of ``mask`` over each grid cell, ``[rows, cols]`` float32.

    Cell borders are rounded to whole mask pixels and summed through an
    integral image, so the cost does not depend on the tile count.
    """
    rows, cols = grid_shape
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    y_edges = np.clip(np.round(np.arange(rows + 1) * step_level * mask_px_per_level_px).astype(int), 0, mask.shape[0])
    x_edges = np.clip(np.round(np.arange(cols + 1) * step_level * mask_px_per_level_px).astype(int), 0, mask.shape[1])
    y0, y1 = y_edges[:-1, None], y_edges[1:, None]
    x0, x1 = x_edges[None, :-1], x_edges[None, 1:]
    sums = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    areas = np.maximum((y1 - y0) * (x1 - x0), 1)
    return (sums / areas).astype(np.float32)


def plan_grid(
    level_size: tuple[int, int],
    plan: ResolutionPlan,
    mask: np.ndarray,
    mask_mpp_um: float,
    min_tissue_fraction: float,
    block_tiles: int,
) -> TileGrid:
    """Select grid cells whose tissue fraction reaches ``min_tissue_fraction``.

    Cells are ordered block by block (``block_tiles`` × ``block_tiles`` cells,
    blocks row-major, cells row-major inside a block), the order in which they
    are read, so that a region read serves consecutive tiles.
    """
    level_width, level_height = level_size
    step = plan.tile_size_level
    grid_shape = (level_height // step, level_width // step)
    if min(grid_shape) == 0:
        empty = np.zeros(0, dtype=np.int32)
        return TileGrid(empty, empty, np.zeros(0, dtype=np.float32), grid_shape)
    fractions = cell_tissue_fractions(mask, plan.level_mpp_um / mask_mpp_um, grid_shape, step)
    rows, cols = np.nonzero(fractions >= max(min_tissue_fraction, np.finfo(np.float32).tiny))
    order = np.lexsort((cols, rows, cols // block_tiles, rows // block_tiles))
    rows, cols = rows[order].astype(np.int32), cols[order].astype(np.int32)
    return TileGrid(rows=rows, cols=cols, tissue_fraction=fractions[rows, cols], shape=grid_shape)


def level0_coordinates(grid: TileGrid, plan: ResolutionPlan) -> np.ndarray:
    """Top-left corner of each kept cell in level-0 pixels, ``[N, 2]`` int64 as (x, y)."""
    x = np.round(grid.cols.astype(np.float64) * plan.tile_size_level0)
    y = np.round(grid.rows.astype(np.float64) * plan.tile_size_level0)
    return np.stack([x, y], axis=1).astype(np.int64)
