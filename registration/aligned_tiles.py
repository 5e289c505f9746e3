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

import numpy as np

from registration.sampling import interpolate_nodes, sample_slide
from tiling.config import TilingConfig, TissueConfig
from tiling.slide import opened_slide
from tiling.tile_slide import plan_tiles
from tiling.tissue import detect_tissue, read_thumbnail


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
        tile_plan.coordinates.astype(np.float64),
        grid,
        resolution.tile_size_level0,
        resolution.tile_size_px,
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
    """Share of each tile's nodes on the slide's tissue mask ``[N]`` float32; whether all lie on the slide ``[N]``."""
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
    with opened_slide(slide_path) as backend, ThreadPoolExecutor(threads, thread_name_prefix="extract") as pool:

        def one(nodes: np.ndarray) -> np.ndarray:
            return sample_slide(backend, mpp_um, interpolate_nodes(nodes, tile_size_px), out_mpp_um)

        for start in range(0, len(nodes_xy), batch_size):
            yield np.stack(list(pool.map(one, nodes_xy[start : start + batch_size])))
