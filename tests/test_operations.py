"""Operations: the served deployments run from the API, and the flows use an existing Dask cluster.

Real components over loopback only: a ``prefect server start`` on its own
SQLite database, ``python -m flows.serve`` in a subprocess, a ``dask
scheduler`` and ``dask worker`` processes from the virtual environment.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from flows.prefect_api import TemporaryPrefectServer, _free_loopback_port
from tests.flow_helpers import REPO, assert_same_stores, run_cli, store_contents

SHIPPED = {"CMU-1-Small-Region", "OS-1-detail"}
_BIN = Path(sys.executable).parent


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


@pytest.fixture
def private_prefect_server(tmp_path, monkeypatch):
    """A Prefect server of its own on a free loopback port, with a temporary SQLite database."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home))  # read by the server process when it starts
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{home / 'prefect.db'}")
    server = TemporaryPrefectServer()
    try:
        yield server.wait_until_ready(), home
    finally:
        server.stop()


def test_deployment_parameters_cover_the_flows():
    """Every deployment builds with its defaults; unknown parameters and deployment names are refused."""
    from flows.deployments import DEPLOYMENTS, build_deployment, deployment_spec

    names = {spec.full_name for spec in DEPLOYMENTS}
    assert names == {
        "tile-tcga/tile-tcga",
        "plism/register-plism",
        "plism/extract-plism",
        "embed/embed",
        "distill/distill",
        "robustness/robustness",
        "evaluate/evaluate",
    }
    from flows.jobs import DEPLOYMENT_JOBS

    assert list(DEPLOYMENT_JOBS) == [spec.name for spec in DEPLOYMENTS]  # what serve's options are made of
    for spec in DEPLOYMENTS:
        deployment = build_deployment(spec, cron="0 2 * * *", dask_address="tcp://127.0.0.1:8786")
        schema = deployment._parameter_openapi_schema.model_dump()
        assert set(schema["required"]) <= {"job", "slides", "out", "tiles", "config", "embeddings", "labels"}
        assert deployment.schedules[0].schedule.cron == "0 2 * * *"
        given = deployment.parameters.get("job", {})
        assert ("dask_address" in given) == spec.dask
    assert build_deployment(deployment_spec("register-plism")).parameters == {"job": {"stage": "register"}}
    with pytest.raises(ValueError, match="no parameter"):
        build_deployment(deployment_spec("tile-tcga"), {"slide": "typo"})
    with pytest.raises(ValueError, match="no deployment"):
        deployment_spec("tile")


@pytest.mark.parametrize(
    ("api_url", "options", "message"),
    [
        (None, [], "PREFECT_API_URL"),
        ("http://127.0.0.1:9/api", [], "does not answer"),
        (None, ["--config", "{tmp}/serve.yaml"], "unknown key tile"),
    ],
)
@pytest.mark.slow
def test_serve_refuses_to_start_without_a_server_or_with_a_bad_config(tmp_path, api_url, options, message):
    (tmp_path / "serve.yaml").write_text('tile:\n  cron: "0 2 * * *"\n')
    env = {**os.environ, "PREFECT_HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    done = subprocess.run(
        [sys.executable, "-m", "flows.serve", *(o.format(tmp=tmp_path) for o in options)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


@pytest.mark.slow
def test_served_tile_tcga_deployment_runs_from_the_api(private_prefect_server, slide_dir, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url, home = private_prefect_server
    log = tmp_path / "serve.log"
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    serve = None
    try:
        with log.open("w") as output:
            serve = subprocess.Popen(
                [sys.executable, "-m", "flows.serve", "--only", "tile-tcga", "embed", "--cron-embed", "30 3 * * *"],
                cwd=REPO,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        with temporary_settings({PREFECT_API_URL: api_url}):
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + 60
                while True:
                    assert serve.poll() is None, _tail(log)
                    with contextlib.suppress(Exception):
                        embed = client.read_deployment_by_name("embed/embed")
                        tiling = client.read_deployment_by_name("tile-tcga/tile-tcga")
                        break
                    assert time.monotonic() < deadline, _tail(log)
                    time.sleep(0.5)
                assert [s.schedule.cron for s in embed.schedules] == ["30 3 * * *"]
                assert not tiling.schedules
                out = tmp_path / "tiles.zarr"
                run = run_deployment(
                    name="tile-tcga/tile-tcga",
                    timeout=150,
                    poll_interval=1,
                    parameters={"job": {"slides": str(slide_dir), "out": str(out), "workers": 2}},
                )
                state = client.read_flow_run(run.id).state
                assert state is not None and state.is_completed(), (state, _tail(log))
                # The deployment run is the job's run: no child run; its logs, progress and summary are its own.
                children = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id]))
                )
                assert children == []
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        key=ArtifactFilterKey(any_=["tile-tcga-summary", "tile-tcga-progress"])
                    )
                )
                assert sorted(a.key for a in artifacts) == ["tile-tcga-progress", "tile-tcga-summary"]
                assert {a.flow_run_id for a in artifacts} == {run.id}
                logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
                messages = "\n".join(log.message for log in logs)
                assert "local Dask cluster of 2 worker processes" in messages and "2 slides listed" in messages
        assert set(store_contents(out)) == SHIPPED
    finally:
        _stop(serve)


@pytest.mark.slow
def test_tile_tcga_on_an_existing_dask_cluster(prefect_api, slide_dir, tmp_path):
    from distributed import Client

    port = _free_loopback_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "DASK_LOGGING__DISTRIBUTED": "warning"}
    logs = tempfile.TemporaryFile()
    processes: list[subprocess.Popen] = []
    try:
        processes.append(
            subprocess.Popen(
                [str(_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                cwd=REPO,
                env=env,
                stdout=logs,
                stderr=subprocess.STDOUT,
            )
        )
        for _ in range(2):
            processes.append(
                subprocess.Popen(
                    [
                        str(_BIN / "dask"),
                        "worker",
                        address,
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=logs,
                    stderr=subprocess.STDOUT,
                )
            )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        on_cluster, local = tmp_path / "cluster.zarr", tmp_path / "local.zarr"
        runs = [
            run_cli(
                "--slides", str(slide_dir), "--out", str(on_cluster), "--dask-address", address, api_url=prefect_api
            ),
            run_cli("--slides", str(slide_dir), "--out", str(local), "--workers", "2", api_url=prefect_api),
        ]
        for run in runs:
            output, _ = run.communicate(timeout=240)
            assert run.returncode == 0, output
        with Client(address, timeout=60) as client:  # the slides were tiled by this cluster
            prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        assert "tile_slide_task" in prefixes, prefixes
        assert set(store_contents(on_cluster)) == SHIPPED
        assert_same_stores(on_cluster, local)
    finally:
        for process in reversed(processes):
            _stop(process)
        logs.close()
