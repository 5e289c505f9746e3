"""The tiling command's first slides, started before the flow run: the flow takes them over, or they are undone."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from flows import early_slides, tiling_flow
from flows.early_slides import first_slides_started_early
from flows.jobs import TileJob
from flows.tiling_run import RunRequest
from storage.manifest import DONE
from storage.tile_store import TileStore
from tests.flow_helpers import assert_same_stores
from tiling.config import TilingConfig


@pytest.fixture
def cluster():
    """A started in-process cluster of one single-threaded worker, as the command's early start hands it over."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
    ) as started:
        future: Future = Future()
        future.set_result(started)
        yield future


def _request(slide_dir, out) -> RunRequest:
    return RunRequest(str(slide_dir), str(out), TilingConfig(), None, None, False)


@pytest.mark.slow
def test_a_run_the_flow_never_takes_is_cancelled_and_its_store_released(slide_dir, tmp_path, cluster) -> None:
    out = tmp_path / "store.zarr"
    with first_slides_started_early(_request(slide_dir, out), cluster):
        pass
    store = TileStore(out)
    store.acquire_run_lock()  # would raise StoreError if the early run still held it
    store.release_run_lock()


@pytest.mark.slow
def test_the_flow_takes_the_early_run_over_and_reports_every_slide(
    slide_dir, tmp_path, cluster, prefect_api, monkeypatch
) -> None:
    from flows.job_flows import tile

    reference, out = tmp_path / "reference.zarr", tmp_path / "store.zarr"
    tiling_flow.tile_tcga(slides=str(slide_dir), out=str(reference))
    taken = []

    def take_over(request: RunRequest):
        early = early_slides.take_over(request)
        taken.append(len(early.submitted) if early else None)
        return early

    monkeypatch.setattr(tiling_flow, "take_over", take_over)
    job = TileJob(slides=str(slide_dir), out=str(out), dask_address=cluster.result().scheduler_address)
    with first_slides_started_early(_request(slide_dir, out), cluster):
        summary = tile(job)
    assert taken == [2]  # both slides were started before the flow run, and it took them
    assert (summary["slides"], summary[DONE]) == (2, 2)  # and reported them
    assert_same_stores(reference, out)
    store = TileStore(out)
    store.acquire_run_lock()  # the flow released the lock it took over
    store.release_run_lock()
