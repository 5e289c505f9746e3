"""Where a flow's tasks run: in-process, on a local Dask cluster, or on an existing one.

Prefect tasks that run in Dask worker processes talk to the Prefect API. Local
worker processes inherit ``PREFECT_API_URL`` from the driver (see
:mod:`flows.prefect_api`). Workers of an existing cluster on other machines
need a real server they can reach: set ``PREFECT_API_URL`` for them as for the
driver, or each worker process starts its own temporary server.
"""

from __future__ import annotations

import logging
import os

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.retries import is_transient


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
    if not dask_address and workers <= 1:
        return ThreadPoolTaskRunner(max_workers=1)
    import dask
    from prefect_dask import DaskTaskRunner  # imports distributed: only when Dask is used

    # Dask keeps the last `low-level-log-length` messages of each connection, transitions and events for
    # debugging, 1,000 by default. In the driver (the client and a local cluster's scheduler) the messages
    # hold every task's arguments: 7 KiB a task kept until the logs fill (docs/performance.md).
    dask.config.set({"distributed.admin.low-level-log-length": 100})
    if dask_address:
        return DaskTaskRunner(address=dask_address)

    # Dask starts worker processes as daemons, and a daemon may not have children: the embedding
    # loader's reader processes would fail. (Workers of an existing cluster need
    # DASK_DISTRIBUTED__WORKER__DAEMON=False in their environment; see docs/operations.md.)
    # The workers' statistical profiler feeds only the dashboard (off here), and keeps up to 1,000
    # one-second stack profiles: ~130 KiB a slide of worker memory for the first ~17 minutes of a run.
    dask.config.set({"distributed.worker.daemon": False, "distributed.worker.profile.enabled": False})
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


def is_transient_io_error(task, task_run, state) -> bool:
    """Prefect retry condition: retry I/O hiccups, never bad input (see :func:`is_transient`)."""
    return is_transient(state.result(raise_on_failure=False))
