"""Where a flow's tasks run: in-process, on a local Dask cluster, or on an existing one.

Prefect tasks that run in Dask worker processes talk to the Prefect API. In
ephemeral mode (no ``PREFECT_API_URL``) each worker process would start its
own temporary API server, ~10 s per worker. :func:`share_ephemeral_api` starts
the one temporary server in the driving process first and exports its address,
so local worker processes, which inherit the environment, use it instead.
Workers of an existing cluster on other machines need a real server: set
``PREFECT_API_URL`` for them as for the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner


@contextlib.contextmanager
def share_ephemeral_api() -> Iterator[str | None]:
    """Start Prefect's temporary API server once and point this process and its children at it.

    Yields the API URL in use (``None`` never happens once started). With a
    configured ``PREFECT_API_URL`` nothing is started.
    """
    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    from prefect.server.api.server import SubprocessASGIServer

    # The temporary server's telemetry writes race its own SQLite writes ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    server.start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        # Send the run's last log lines before the server they go to stops.
        APILogWorker.drain_all(timeout=5)
        server.stop()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def quiet_dask_logging() -> None:
    """Keep Dask's per-worker start/stop chatter out of the console; warnings still show.

    Worker processes started later inherit the environment variable and
    configure their logging from it when they import ``distributed``.
    """
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.getLogger("distributed").setLevel(os.environ["DASK_LOGGING__DISTRIBUTED"].upper())


def make_task_runner(workers: int, dask_address: str | None) -> TaskRunner:
    """Choose the task runner for ``workers`` local processes or an existing Dask scheduler.

    One local worker runs tasks in the driving process: no cluster start-up,
    no inter-process transfer. More use a ``LocalCluster`` with one
    single-threaded process per worker (tiling threads itself inside a slide).
    """
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    if workers <= 1:
        return ThreadPoolTaskRunner(max_workers=1)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "host": "127.0.0.1",
        },
    )
