"""The QC picture of a slide: a view large enough to judge, the tissue outline, and the tiles.

A person checking a run of thousands of slides looks at pictures, not
numbers. The picture is at least :data:`QC_LONG_EDGE_PX` pixels on its long
side (the whole slide at level 0 when the slide is smaller, enlarged by a
whole factor so that it is not a postage stamp), with a title, the tile
counts and a legend above it: green outlines the tissue mask, yellow squares
are the tiles kept, red squares the candidates the tile QC rejected.
"""

from __future__ import annotations

import cv2
import numpy as np

from tiling.resolution import format_mpp
from tiling.tissue import Thumbnail

QC_LONG_EDGE_PX = 1600  # the view read for the picture; never under 1,024 px unless the slide is smaller
_MIN_LONG_EDGE_PX = 1024
_MIN_WIDTH_PX = 900  # room for the header text
_MASK_COLOUR = (0, 170, 0)
_KEPT_COLOUR = (255, 200, 0)
_REJECTED_COLOUR = (220, 0, 0)
_TEXT_COLOUR = (20, 20, 20)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LINE_PX = 30


def qc_view_mpp(mpp_level0_um: float, level0_size: tuple[int, int]) -> float:
    """The pixel size to read the QC view at: :data:`QC_LONG_EDGE_PX` on the long side, or level 0 when smaller."""
    return mpp_level0_um * max(1.0, max(level0_size) / QC_LONG_EDGE_PX)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.75, thickness: int = 2) -> int:
    """Draw ``text``; return the x just past it."""
    cv2.putText(canvas, text, origin, _FONT, scale, _TEXT_COLOUR, thickness, cv2.LINE_AA)
    return origin[0] + cv2.getTextSize(text, _FONT, scale, thickness)[0][0]


def _legend(canvas: np.ndarray, y: int, items: list[tuple[tuple[int, int, int], str, bool]]) -> None:
    x = 12
    for colour, label, filled_line in items:
        if filled_line:
            cv2.line(canvas, (x, y - 7), (x + 28, y - 7), colour, 4)
        else:
            cv2.rectangle(canvas, (x, y - 16), (x + 18, y + 2), colour, 3)
        x = _text(canvas, label, (x + 36, y), 0.65, 1) + 28


def render_qc_picture(
    view: Thumbnail,
    tissue_mask: np.ndarray,
    kept_level0: np.ndarray,
    rejected_level0: np.ndarray,
    tile_size_level0: float,
    mpp_level0_um: float,
    *,
    title: str,
    details: str,
) -> bytes:
    """A PNG of ``view`` with the mask outline and tile squares, under a header with ``title``, counts and legend.

    ``tissue_mask`` may be at any resolution covering the same slide area as
    ``view``; it is scaled to the view before its outline is traced.
    ``kept_level0`` and ``rejected_level0`` are tiles' top-left corners in
    level-0 pixels; ``details`` is the second header line (sizes, mpp).
    """
    picture = view.rgb.copy()
    height, width = picture.shape[:2]
    enlarge = max(1, _MIN_LONG_EDGE_PX // max(height, width))
    if enlarge > 1:
        picture = cv2.resize(picture, None, fx=enlarge, fy=enlarge, interpolation=cv2.INTER_NEAREST)
        height, width = picture.shape[:2]
    line = max(2, round(max(height, width) / 500))
    mask = cv2.resize(tissue_mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, _MASK_COLOUR, line)
    scale = enlarge * mpp_level0_um / view.mpp_um  # picture px per level-0 px
    size = max(2, round(tile_size_level0 * scale))
    for coords, colour in ((rejected_level0, _REJECTED_COLOUR), (kept_level0, _KEPT_COLOUR)):
        for x, y in np.round(np.asarray(coords).reshape(-1, 2) * scale).astype(int):
            cv2.rectangle(picture, (x, y), (x + size - 1, y + size - 1), colour, max(2, line // 2))
    header = 3 * _LINE_PX + 16
    canvas = np.full((header + height, max(width, _MIN_WIDTH_PX), 3), 255, dtype=np.uint8)
    canvas[header:, :width] = picture
    _text(canvas, title, (12, _LINE_PX), 0.85, 2)
    _text(canvas, details, (12, 2 * _LINE_PX + 2), 0.65, 1)
    _legend(
        canvas,
        3 * _LINE_PX + 6,
        [
            (_MASK_COLOUR, "tissue outline", True),
            (_KEPT_COLOUR, "tile kept", False),
            (_REJECTED_COLOUR, "tile rejected by QC", False),
        ],
    )
    ok, png = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode the QC picture")
    return png.tobytes()


def qc_details(n_kept: int, n_rejected: int, mpp_tiles_um: float, tile_size_px: int, view_mpp_um: float) -> str:
    """The header's second line: counts, tile size and pixel sizes, in the one mpp format."""
    return (
        f"{n_kept} tiles kept, {n_rejected} rejected of {n_kept + n_rejected} on tissue; "
        f"{tile_size_px} px at {format_mpp(mpp_tiles_um)}; picture at {format_mpp(view_mpp_um)}"
    )


def slide_qc_picture(
    backend, slide_id: str, mpp_level0_um: float, tile_plan, kept: np.ndarray, tile_size_px: int
) -> bytes:
    """The QC picture of a tiled slide: a fresh view at :func:`qc_view_mpp`, the plan's mask and grid.

    ``tile_plan`` is the slide's :class:`tiling.tile_slide.TilePlan`; ``kept``
    the grid positions whose tiles went into the store (the others on tissue
    were rejected by the tile QC).
    """
    from tiling.tissue import read_thumbnail

    view = read_thumbnail(backend, mpp_level0_um, qc_view_mpp(mpp_level0_um, backend.level_dimensions[0]))
    coordinates = tile_plan.coordinates
    rejected = np.ones(len(coordinates), dtype=bool)
    rejected[kept] = False
    plan = tile_plan.resolution
    details = qc_details(len(kept), int(rejected.sum()), plan.effective_mpp_um, tile_size_px, view.mpp_um)
    return render_qc_picture(
        view,
        tile_plan.mask,
        coordinates[kept],
        coordinates[rejected],
        plan.tile_size_level0,
        mpp_level0_um,
        title=slide_id,
        details=details,
    )
