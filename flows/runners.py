"""Where a flow's tasks run: in-process, on a local Dask cluster, or on an existing one.

Imports nothing from Prefect at module level: a command starts its local
cluster from here before Prefect loads (:func:`local_cluster_started_early`).

Prefect tasks that run in Dask worker processes talk to the Prefect API. Local
worker processes inherit ``PREFECT_API_URL`` from the driver (see
:mod:`flows.prefect_api`). Workers of an existing cluster on other machines
need a real server they can reach: set ``PREFECT_API_URL`` for them as for the
driver, or each worker process starts its own temporary server.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from flows.retries import is_transient

if TYPE_CHECKING:
    from distributed import LocalCluster
    from prefect.task_runners import TaskRunner

_CLOSE_TIMEOUT_S = 30.0


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
    single-threaded process per worker (tiling threads itself inside a slide):
    the one :func:`local_cluster_started_early` started, if any.
    """
    if not dask_address and workers <= 1:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner  # imports distributed: only when Dask is used

    _keep_short_debug_logs()
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    _hide_dashboard_link()
    if _early_cluster is not None and _early_cluster[0] == workers:
        return DaskTaskRunner(address=_early_cluster[1].result().scheduler_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=_local_cluster_kwargs(workers))


class _NoDashboardLink(logging.Filter):
    """Drops prefect-dask's "The Dask dashboard is available at ...": a local cluster's link shows no dashboard."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The Dask dashboard is available")


def _hide_dashboard_link() -> None:
    """The local clusters have no dashboard; their scheduler's link would lead to its health routes only."""
    logger = logging.getLogger("prefect.task_runner.dask")
    if not any(isinstance(f, _NoDashboardLink) for f in logger.filters):
        logger.addFilter(_NoDashboardLink())


def _keep_short_debug_logs() -> None:
    """Keep 100 messages, not 1,000, in Dask's debugging logs: in the driver they hold every task's arguments.

    Dask keeps the last ``low-level-log-length`` messages of each connection,
    transitions and events. In the driver (the client and a local cluster's
    scheduler, which read it when they start) the messages hold every task's
    arguments: 7 KiB a task kept until the logs fill (docs/performance.md).
    Every Dask server (the scheduler, each nanny: three in a local run's
    driver; each worker) also samples its CPU, memory and I/O twice a second
    for the dashboard and keeps 7,200 samples: ~1.4 MiB each, filling for an
    hour. A minute of them is kept.
    """
    import dask

    dask.config.set({"distributed.admin.low-level-log-length": 100, "distributed.admin.system-monitor.log-length": 120})


def _local_cluster_kwargs(workers: int) -> dict:
    """``LocalCluster`` arguments for ``workers`` single-threaded processes, after setting Dask's config for them."""
    import dask

    _keep_short_debug_logs()

    # Dask starts worker processes as daemons, and a daemon may not have children: the embedding
    # loader's reader processes would fail. (Workers of an existing cluster need
    # DASK_DISTRIBUTED__WORKER__DAEMON=False in their environment; see docs/operations.md.)
    # The workers' statistical profiler feeds only the dashboard (off here), and keeps up to 1,000
    # one-second stack profiles: ~130 KiB a slide of worker memory for the first ~17 minutes of a run.
    dask.config.set({"distributed.worker.daemon": False, "distributed.worker.profile.enabled": False})
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        # With the dashboard off the scheduler still serves its health and metrics routes, on 8787 by default:
        # a second cluster on the machine warned "Port 8787 is already in use" and took another. Any free port.
        "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"},
        "host": "127.0.0.1",
    }


def _start_local_cluster(workers: int, preload: Sequence[str]) -> LocalCluster:
    """A local cluster whose workers are forked from one process that imported ``preload`` once.

    Spawned workers each import Dask, the command's main module and the task's
    modules (~2 s of a core each), and leave through a full interpreter
    shutdown: under load the nanny's 4 s wait often ran out and it killed
    them. Forked from a fork server they start with those imports done, and
    exit at once (``os._exit``, no ``atexit`` handlers: nothing of Prefect's
    runs in these workers).
    """
    import dask
    from distributed import LocalCluster
    from distributed.utils import get_mp_context

    kwargs = _local_cluster_kwargs(workers)
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):  # read as workers start
        get_mp_context()  # Dask sets its own preload list on first use; this one replaces it
        multiprocessing.get_context("forkserver").set_forkserver_preload(["distributed", *preload])
        return LocalCluster(**kwargs)


# The local cluster a command started before Prefect loaded (workers, the cluster being started), for
# make_task_runner to use instead of starting one; set only inside local_cluster_started_early.
_early_cluster: tuple[int, Future[LocalCluster]] | None = None


@contextlib.contextmanager
def local_cluster_started_early(
    workers: int, dask_address: str | None, preload: Sequence[str] = ()
) -> Iterator[Future[LocalCluster] | None]:
    """Start the local cluster a job of ``workers`` will run on now, in the background, and close it after.

    A command enters this before it imports Prefect and creates its flow run
    (~3 s of one core), so the worker processes start, with ``preload``
    imported, meanwhile instead of after. Inside, :func:`make_task_runner`
    (and so :func:`tasks_on`) connects to this cluster by address, as to an
    existing one; the cluster is closed here, once the flow has returned, and
    waited for. Only for flows whose workers do not use Prefect: they start
    before a temporary server's address is exported, and leave without running
    ``atexit`` handlers (see :func:`_start_local_cluster`). Without a local
    cluster (one worker, or ``dask_address``) this does nothing and yields
    ``None``; else it yields the cluster being started.
    """
    global _early_cluster
    if dask_address or workers <= 1:
        yield None
        return
    quiet_dask_logging()  # before the workers start: they read it from the environment
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dask-cluster-start") as starter:
        cluster: Future[LocalCluster] = starter.submit(_start_local_cluster, workers, preload)
        _early_cluster = (workers, cluster)
        try:
            yield cluster
        finally:
            _early_cluster = None
            if cluster.exception() is None:  # waits for a start still under way
                cluster.result().close(timeout=_CLOSE_TIMEOUT_S)


@contextlib.contextmanager
def tasks_on(workers: int, dask_address: str | None) -> Iterator[TaskRunner]:
    """Inside a running flow: from here on, its tasks and Dask futures run where a job's parameters say.

    A flow's task runner is otherwise fixed when the flow is decorated or
    served; a job names its workers per run. The runner is started here and
    put in the flow run's context, where ``task.submit`` and
    :func:`flows.submission.dask_client_of_flow` find it, so the work stays in
    this flow run: its task runs, logs and artifacts are this run's, with no
    child run in between.
    """
    from prefect import get_run_logger
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None:
        raise RuntimeError("tasks_on() is for the inside of a running flow")
    quiet_dask_logging()
    if dask_address:
        get_run_logger().info("tasks run on the Dask cluster at %s", dask_address)
    elif workers > 1:
        get_run_logger().info("tasks run on a local Dask cluster of %d worker processes", workers)
    with make_task_runner(workers, dask_address) as runner, context.model_copy(update={"task_runner": runner}):
        yield runner


def is_transient_io_error(task, task_run, state) -> bool:
    """Prefect retry condition: retry I/O hiccups, never bad input (see :func:`is_transient`)."""
    return is_transient(state.result(raise_on_failure=False))
