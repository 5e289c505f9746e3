"""The tiling command's first slides, started on its local cluster while Prefect is still loading.

Importing Prefect and creating the flow run take seconds of one core before
the flow's body can hand out a slide; the local cluster is up sooner. So the
command opens the run (lists the slides, opens the store and takes its run
lock: :func:`flows.tiling_run.open_run`) and submits the first window of
slides as plain Dask futures as soon as the cluster answers. The flow then
takes that run over (:func:`take_over`): it reports those slides as they
finish, exactly like the ones it submits itself, so the run's logs, progress
and summary hold every slide. Nothing of Prefect runs before the flow does:
what the early slides do is the workers' work only, as in the flow.

A run the flow never takes over (it failed before its body, or was asked for
other parameters) is cancelled on the way out and its lock released.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flows.tiling_run import OpenedRun, RunRequest, open_run
from flows.tiling_task import tile_slide_task

if TYPE_CHECKING:
    from distributed import Client, LocalCluster


@dataclass
class EarlyRun:
    """An opened run and the slides already submitted for it, ``(spec, Dask future)`` in submission order."""

    opened: OpenedRun
    client: Client
    in_flight: list[tuple[Any, Any]]
    taken: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        """Cancel what the flow did not take and release the store; close the client either way."""
        with self._lock:
            taken, self.taken = self.taken, True
        if not taken:
            for _, future in self.in_flight:
                future.cancel()
            self.opened.store.release_run_lock()
        self.in_flight = []
        self.client.close()


# The run the command started, keyed by its request; set only inside first_slides_started_early.
_early: tuple[RunRequest, Future[EarlyRun]] | None = None


def _start(request: RunRequest, cluster: Future[LocalCluster]) -> EarlyRun:
    """Open the run, then submit two slides per worker thread as soon as the cluster is up."""
    from distributed import Client

    opened = open_run(request)
    try:
        client = Client(cluster.result().scheduler_address, set_as_default=False)
    except BaseException:
        opened.store.release_run_lock()
        raise
    window = 2 * sum(client.nthreads().values())
    root = str(opened.store.root)
    in_flight = [
        (spec, client.submit(tile_slide_task, spec, root, request.config, pure=False)) for spec in opened.todo[:window]
    ]
    return EarlyRun(opened, client, in_flight)


def take_over(request: RunRequest) -> EarlyRun | None:
    """The run started early for ``request``, now the caller's (its lock and futures), or ``None``.

    Waits for the early start if it is still under way, and raises what it
    raised (a store in use, a slide list that cannot be read): the same errors
    the caller would have met opening the run itself.
    """
    if _early is None or _early[0] != request:
        return None
    early = _early[1].result()
    with early._lock:
        if early.taken:
            return None
        early.taken = True
    return early


@contextlib.contextmanager
def first_slides_started_early(request: RunRequest, cluster: Future[LocalCluster] | None) -> Iterator[None]:
    """Open ``request``'s run and start its first slides on ``cluster`` in the background; clean up after.

    Without a cluster starting (one worker, an existing cluster) this does nothing.
    """
    global _early
    if cluster is None:
        yield
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="first-slides") as starter:
        early = starter.submit(_start, request, cluster)
        _early = (request, early)
        try:
            yield
        finally:
            _early = None
            if early.exception() is None:
                early.result().close()
