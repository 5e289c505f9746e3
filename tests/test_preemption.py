"""A slide is tiled once: a rerun task finds it complete, and a lost Dask worker costs only its slide in progress."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest
import zarr

from flows.runners import make_task_runner
from flows.tiling_flow import tile_tcga
from storage.manifest import DONE, SKIPPED, read_record
from storage.tile_store import TileStore
from tests.conftest import CMU_SVS
from tests.flow_helpers import assert_same_stores, linked_slides
from tiling.config import TilingConfig
from tiling.slide_list import SlideSpec
from tiling.tile_slide import tile_slide


def _publication(store: TileStore, slide_id: str) -> tuple[int, int, str]:
    """What changes when a slide is published again: its folder's inode, its shard's mtime, ``created_at``."""
    path = store.slide_path(slide_id)
    shard = next((path / "tiles" / "c").iterdir())
    return path.stat().st_ino, shard.stat().st_mtime_ns, zarr.open_group(path, mode="r").attrs["created_at"]


def test_a_complete_slide_is_returned_without_reading_or_writing_it(tmp_path, monkeypatch):
    config = TilingConfig(checksum=False)
    store = TileStore.create_or_open(tmp_path / "tiles.zarr", config.model_dump())
    spec = SlideSpec(CMU_SVS, "cmu")
    first = tile_slide(spec, store, config)
    before = _publication(store, "cmu")

    def no_reading(path):
        raise AssertionError(f"{path} was opened again")

    # ``tiling.tile_slide`` is also the name of a function the package exports: patch the module itself.
    monkeypatch.setattr(sys.modules["tiling.tile_slide"], "opened_slide", no_reading)
    again = tile_slide(spec, store, config)
    assert again == first and again.status == DONE and again.n_tiles > 0
    assert _publication(store, "cmu") == before

    (store.status_dir / "cmu" / "zarr.json").unlink()  # killed between publishing and writing the record
    orphan = tile_slide(spec, store, config)
    assert (orphan.status, orphan.n_tiles) == (SKIPPED, 0)
    assert read_record(store, "cmu") is None and _publication(store, "cmu") == before


@pytest.fixture
def twelve_slides(tmp_path, slide_025_single_level):
    """Twelve slides that need resampling (about a second each), as hard links to one file."""
    return linked_slides(tmp_path / "twelve", slide_025_single_level, 12)


def _kill_a_busy_worker_after(client, store: TileStore, finished: int, killed: dict) -> None:
    """Once ``finished`` slides are complete, SIGKILL the worker that has done most and is tiling now."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        complete = store.complete_slide_ids()
        busy = {worker: keys for worker, keys in client.processing().items() if keys}
        if len(complete) >= finished and busy:
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count, workers=list(busy))
            victim = max(executed, key=executed.get)
            pid = client.run(os.getpid, workers=[victim])[victim]
            killed.update(
                complete={slide_id: _publication(store, slide_id) for slide_id in complete},
                executed=executed[victim],
                pid=pid,
            )
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_killing_a_worker_mid_run_retiles_no_complete_slide(twelve_slides, tmp_path, prefect_api):
    from distributed import Client, LocalCluster

    config = TilingConfig(threads=1, checksum=False)
    clean, interrupted = tmp_path / "clean.zarr", tmp_path / "interrupted.zarr"
    tile_tcga(slides=str(twelve_slides), out=str(clean), config=config)
    store = TileStore.create_or_open(interrupted, config.model_dump())
    killed: dict = {}
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        killer = threading.Thread(target=_kill_a_busy_worker_after, args=(client, store, 3, killed))
        killer.start()
        summary = tile_tcga.with_options(task_runner=make_task_runner(1, cluster.scheduler_address))(
            slides=str(twelve_slides),
            out=str(interrupted),
            config=config,
        )
        killer.join()
    assert killed, "no worker was killed"
    assert killed["executed"] >= 1  # the victim had finished slides of its own, whose results it no longer holds
    assert 3 <= len(killed["complete"]) < 12, "the run ended before a worker could be killed mid-way"
    for slide_id, publication in killed["complete"].items():
        assert _publication(store, slide_id) == publication, f"{slide_id} was tiled again"
    assert (summary["done"], summary["failed"]) == (12, 0)
    assert_same_stores(clean, interrupted)
