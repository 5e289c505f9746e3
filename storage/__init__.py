"""Zarr stores of tiles and their manifests: layout, writers and the read API.

Importing this package loads only numpy, zarr and imagecodecs; the read API
(xarray, pandas, and dask when installed) is imported on first use, so that
tiling workers, which only write, start without it, and analysts read stores
without the pipeline's dependencies installed.
"""

from __future__ import annotations

import importlib

import storage.jpeg_codec  # noqa: F401  registers the tiles' codec names with zarr
from storage.manifest import SlideRecord
from storage.tile_store import StoreError, TileStore

_LAZY = {
    "TileReader": "storage.read",
    "open_slide_group": "storage.read",
    "open_tiles": "storage.read",
    "read_manifest": "storage.manifest",
    "open_aligned_tiles": "storage.aligned_store",
    "open_embeddings": "storage.embedding_store",
}

__all__ = ["SlideRecord", "StoreError", "TileStore", *_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'storage' has no attribute {name!r}")
