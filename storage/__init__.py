"""Zarr stores of tiles and their manifests: layout, writers and the read API."""

from storage.manifest import SlideRecord, read_manifest
from storage.read import TileReader, open_slide_group, open_tiles
from storage.tile_store import StoreError, TileStore

__all__ = ["SlideRecord", "StoreError", "TileReader", "TileStore", "open_slide_group", "open_tiles", "read_manifest"]
