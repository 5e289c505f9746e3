"""Whole-slide images to tissue tiles at a physical resolution."""

from tiling.config import TileQCConfig, TilingConfig, TissueConfig
from tiling.slide_list import SlideSpec, list_slides
from tiling.tile_slide import tile_slide

__all__ = ["SlideSpec", "TileQCConfig", "TilingConfig", "TissueConfig", "list_slides", "tile_slide"]
