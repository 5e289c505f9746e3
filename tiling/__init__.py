"""Whole-slide images to tissue tiles at a physical resolution.

The names below are imported on first use: reading a job's ``TilingConfig``
(every command line, before anything starts) does not load the slide
readers, OpenCV and zarr.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the types, for the checker; at run time __getattr__ imports them
    from tiling.config import TileQCConfig, TilingConfig, TissueConfig
    from tiling.slide_list import SlideSpec, list_slides
    from tiling.tile_slide import tile_slide

_LAZY = {
    "TileQCConfig": "tiling.config",
    "TilingConfig": "tiling.config",
    "TissueConfig": "tiling.config",
    "SlideSpec": "tiling.slide_list",
    "list_slides": "tiling.slide_list",
    "tile_slide": "tiling.tile_slide",
}
__all__ = ["SlideSpec", "TileQCConfig", "TilingConfig", "TissueConfig", "list_slides", "tile_slide"]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiling' has no attribute {name!r}")
