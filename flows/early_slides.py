"""The tiling command's first slides, started on its local cluster while Prefect is still loading.

Importing Prefect and creating the flow run take seconds of one core before
the flow's body can hand out a slide; the local cluster is up sooner. So the
command opens the run (lists the slides, opens the store and takes its run
lock: :func:`flows.tiling_run.open_run`) and submits a window of slides as
plain Dask futures as soon as the cluster answers, and keeps it full. The flow then
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
    """An opened run and the slides submitted for it so far, ``(spec, Dask future)`` in submission order.

    Until the flow takes the run over, each slide that finishes is replaced by
    the next one of ``opened.todo`` (from a Dask callback), so the workers keep
    a full window however long Prefect takes to start; the finished ones wait
    in ``submitted`` for the flow to report them.
    """

    opened: OpenedRun
    client: Client
    config: Any
    submitted: list[tuple[Any, Any]] = field(default_factory=list)
    taken: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def submit_next(self, _finished: object = None) -> None:
        """Submit the next slide to tile, unless the flow has taken the run over or none is left."""
        with self._lock:
            if self.taken or len(self.submitted) >= len(self.opened.todo):
                return
            spec = self.opened.todo[len(self.submitted)]
            future = self.client.submit(tile_slide_task, spec, str(self.opened.store.root), self.config, pure=False)
            self.submitted.append((spec, future))
        future.add_done_callback(self.submit_next)

    def take(self) -> bool:
        """Stop submitting; ``True`` the first time only (the caller then owns the run)."""
        with self._lock:
            taken, self.taken = self.taken, True
        return not taken

    def close(self) -> None:
        """Cancel what the flow did not take and release the store; close the client either way."""
        if self.take():
            for _, future in self.submitted:
                future.cancel()
            self.opened.store.release_run_lock()
        self.submitted = []
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
    early = EarlyRun(opened, client, request.config)
    for _ in range(2 * sum(client.nthreads().values())):
        early.submit_next()
    return early


def take_over(request: RunRequest) -> EarlyRun | None:
    """The run started early for ``request``, now the caller's (its lock, ``submitted``), or ``None``.

    From here on nothing more is submitted for it: the slides of
    ``opened.todo`` after the ``submitted`` ones are the caller's to submit.

    Waits for the early start if it is still under way, and raises what it
    raised (a store in use, a slide list that cannot be read): the same errors
    the caller would have met opening the run itself.
    """
    if _early is None or _early[0] != request:
        return None
    early = _early[1].result()
    return early if early.take() else None


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
