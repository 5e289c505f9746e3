"""What a tiling run does before its first slide: list the slides, open the store, take its run lock.

No Prefect here: the tiling command does this before Prefect has loaded, to
start its first slides early (:mod:`flows.early_slides`); the flow does it
itself when nothing was started for it (:mod:`flows.tiling_flow`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from storage.manifest import clear_rejected_records
from storage.tile_store import TileStore
from tiling.config import TilingConfig
from tiling.slide_list import RejectedSlide, SlideSpec, list_slides


@dataclass(frozen=True)
class RunRequest:
    """A tiling run's parameters, as the flow takes them: equal requests are the same run."""

    slides: str
    out: str
    config: TilingConfig
    mpp_override_um: float | None
    mpp_replace_um: float | None
    overwrite: bool


@dataclass
class OpenedRun:
    """A run whose store is open and locked: the slides to tile, those already complete, the rows refused."""

    store: TileStore
    todo: list[SlideSpec]
    complete: list[SlideSpec]
    rejected: list[RejectedSlide]
    opened_at: float = field(default_factory=time.perf_counter)  # the run's clock starts here


def open_run(request: RunRequest) -> OpenedRun:
    """List the slides, open (or create) the store, take its run lock and clear what a killed run left.

    Raises
    ------
    StoreError
        The store was made with other parameters, or another run holds it.
    FileNotFoundError, ValueError
        The slide list cannot be read.
    """
    specs, rejected = list_slides(request.slides, request.mpp_override_um, request.mpp_replace_um)
    config = request.config
    store = TileStore.create_or_open(
        request.out, config.model_dump(), overwrite=request.overwrite, without_effect=config.RUN_ONLY
    )
    store.acquire_run_lock()
    try:
        store.remove_staging_debris()
        clear_rejected_records(store)  # rows refused last time and fixed since must leave the manifest
        todo: list[SlideSpec] = []
        complete: list[SlideSpec] = []
        for spec in specs:
            (complete if store.is_complete(spec.slide_id) else todo).append(spec)
    except BaseException:
        store.release_run_lock()
        raise
    return OpenedRun(store, todo, complete, rejected)
