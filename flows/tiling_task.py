"""The unit of work the tiling flow hands to a Dask worker (or runs itself): one slide.

Kept apart from :mod:`flows.tiling_flow` so that a worker, which imports the
module of the function it runs, imports no Prefect: about 45 MiB and a second
or two less per worker process.
"""

from __future__ import annotations

from flows.retries import retrying
from storage.manifest import SlideRecord
from storage.tile_store import TileStore
from tiling.config import TilingConfig
from tiling.slide_list import SlideSpec
from tiling.tile_slide import tile_slide

RETRIES = 2  # after a transient I/O error
RETRY_DELAY_S = 5.0


def tile_slide_task(spec: SlideSpec, store_root: str, config: TilingConfig) -> SlideRecord:
    """Tile one slide, retrying transient I/O errors; a slide already complete is returned as it is."""
    return retrying(tile_slide, RETRIES, RETRY_DELAY_S)(spec, TileStore(store_root), config)
