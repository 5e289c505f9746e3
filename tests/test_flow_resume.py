"""Runs resume without duplicates or gaps, and scale out to real Dask worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
import zarr

from flows.runners import make_task_runner
from flows.tile_tcga import main
from flows.tiling_flow import tile_tcga
from storage.manifest import read_manifest
from storage.tile_store import StoreError, TileStore
from tests.flow_helpers import assert_same_stores, linked_slides, run_cli
from tiling.config import TilingConfig


@pytest.fixture
def many_slides(tmp_path, slide_025_single_level):
    """Six slides that need resampling, so a run lasts long enough to be killed mid-way."""
    return linked_slides(tmp_path / "many", slide_025_single_level, 6)


def _clean_run(slides, out, api_url) -> None:
    process = run_cli("--slides", str(slides), "--out", str(out), "--workers", "1", api_url=api_url)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_tiles_as_a_clean_run(many_slides, tmp_path, prefect_api):
    clean, resumed = tmp_path / "clean.zarr", tmp_path / "resumed.zarr"
    _clean_run(many_slides, clean, prefect_api)

    process = run_cli(
        "--slides",
        str(many_slides),
        "--out",
        str(resumed),
        "--workers",
        "1",
        "--threads",
        "1",
        api_url=prefect_api,
        start_new_session=True,
    )
    store = TileStore(resumed)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        published = store.complete_slide_ids()
        staging = [p for p in store.staging_dir.glob("slide-*") if p.is_dir()] if store.staging_dir.is_dir() else []
        if published and staging:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed mid-slide"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    interrupted = store.complete_slide_ids()
    assert 1 <= len(interrupted) < 6

    _clean_run(many_slides, resumed, prefect_api)
    assert_same_stores(clean, resumed)
    assert not [p for p in store.staging_dir.iterdir() if p.is_dir()]
    manifest = read_manifest(resumed)
    assert sorted(manifest["slide_id"]) == [f"slide-{i:02d}" for i in range(6)]
    assert set(manifest["status"]) == {"done"}


def test_rerun_skips_complete_slides_and_overwrite_redoes_them(slide_dir, tmp_path, prefect_api):
    out = tmp_path / "tiles.zarr"
    assert main(["--slides", str(slide_dir), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    first = {p.name: p.stat().st_ino for p in (out / "slides").iterdir() if p.is_dir()}
    summary = tile_tcga(slides=str(slide_dir), out=str(out))
    assert (summary["skipped"], summary["done"], summary["tiles"]) == (2, 0, 0)
    assert {p.name: p.stat().st_ino for p in (out / "slides").iterdir() if p.is_dir()} == first
    summary = tile_tcga(slides=str(slide_dir), out=str(out), overwrite=True)
    assert (summary["skipped"], summary["done"]) == (0, 2)


def test_store_refuses_other_parameters_and_foreign_folders(slide_dir, tmp_path, prefect_api):
    out = tmp_path / "tiles.zarr"
    tile_tcga(slides=str(slide_dir), out=str(out))
    with pytest.raises(StoreError, match=r"\(tile_size_px: 224 in the store, 256 now\)"):  # that field alone
        tile_tcga(slides=str(slide_dir), out=str(out), config=TilingConfig(tile_size_px=256))
    assert main(["--slides", str(slide_dir), "--out", str(out), "--tile-size", "256", "--workers", "1"]) == 2
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    assert main(["--slides", str(slide_dir), "--out", str(foreign), "--overwrite", "--workers", "1"]) == 2
    assert (foreign / "chapter1.tex").read_text() == "precious"


@pytest.mark.slow
def test_flow_on_a_local_cluster_of_two_processes_matches_in_process_run(slide_dir, tmp_path, prefect_api):
    shutil.copy(slide_dir / "CMU-1-Small-Region.svs", slide_dir / "TCGA-AA-3512-01Z-00-DX1.0a1b2c3d.svs")
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    tile_tcga(slides=str(slide_dir), out=str(one))
    summary = tile_tcga.with_options(task_runner=make_task_runner(2, None))(slides=str(slide_dir), out=str(two))
    assert (summary["done"], summary["failed"]) == (3, 0)
    assert_same_stores(one, two)
    assert "TCGA-AA-3512-01Z-00-DX1" in TileStore(two).complete_slide_ids()
    group = zarr.open_group(two / "slides" / "TCGA-AA-3512-01Z-00-DX1", mode="r")
    assert group.attrs["source_path"].endswith("TCGA-AA-3512-01Z-00-DX1.0a1b2c3d.svs")


@pytest.mark.slow
def test_cli_runs_on_an_existing_dask_cluster(slide_dir, tmp_path, prefect_api):
    from distributed import Client, LocalCluster

    out = tmp_path / "tiles.zarr"
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},  # its health routes, off 8787 (docs/operations.md)
    ) as cluster:
        assert (
            main(
                [
                    "--slides",
                    str(slide_dir),
                    "--out",
                    str(out),
                    "--dask-address",
                    cluster.scheduler_address,
                    "--no-progress",
                ]
            )
            == 0
        )
        with Client(cluster) as client:
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert TileStore(out).complete_slide_ids() == ["CMU-1-Small-Region", "OS-1-detail"]
    assert sum(executed.values()) >= 2  # tiled by the cluster's worker, not in this process
