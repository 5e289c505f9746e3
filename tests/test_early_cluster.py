"""The tiling command's local cluster: started before Prefect loads, workers preloaded, closed at the end."""

from __future__ import annotations

import sys

import pytest

from flows.runners import local_cluster_started_early, make_task_runner
from flows.tiling_flow import tile_tcga
from tests.flow_helpers import assert_same_stores, run_cli


def _loaded(module: str) -> bool:
    return module in sys.modules


@pytest.mark.slow
def test_early_cluster_workers_have_the_task_imported_and_the_cluster_is_closed_after() -> None:
    from distributed import Client

    with local_cluster_started_early(2, None, preload=["flows.tiling_task"]):
        address = make_task_runner(2, None).address  # the early cluster's, not a new one
        with Client(address) as client:
            loaded = client.run(_loaded, "flows.tiling_task")
    assert list(loaded.values()) == [True, True]  # imported once in the fork server, before any task
    with pytest.raises(OSError):
        Client(address, timeout=2)


@pytest.mark.slow
def test_cli_on_two_workers_matches_in_process_run_and_exits_cleanly(slide_dir, tmp_path, prefect_api) -> None:
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    tile_tcga(slides=str(slide_dir), out=str(one))
    command = run_cli("--slides", str(slide_dir), "--out", str(two), "--workers", "2", api_url=prefect_api)
    output, _ = command.communicate(timeout=600)
    assert command.returncode == 0, output
    assert "killing" not in output, output  # no worker outlived the nanny's wait at exit
    assert_same_stores(one, two)
