"""Run many independent work items with a bounded window in flight, results released as they arrive.

Submitting every item before reading any result (Prefect's ``.map``) makes a
6,000-slide run wait minutes before its first progress line, and keeps every
result pinned on the worker that made it: a lost worker then has all of them
recomputed. Here at most ``window`` items are in flight; each finished one is
handed to the caller and forgotten, and the next is submitted. See
``docs/adr/0004-submission-at-scale.md`` for why tiling submits plain Dask
futures rather than one Prefect task run per slide.
"""

from __future__ import annotations

import concurrent.futures
import math
import queue
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from prefect.context import FlowRunContext

Item = TypeVar("Item")
_DONE = object()
_WINDOW_REFRESH_S = 10.0


def dask_client_of_flow():
    """The Dask client of the running flow's task runner, or ``None`` when its tasks run in this process."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    dask_runners = sys.modules.get("prefect_dask.task_runners")  # imported wherever a DaskTaskRunner exists
    if dask_runners is None or not isinstance(runner, dask_runners.DaskTaskRunner):
        return None
    return runner.client


def _run_here(function: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
    """Run ``function`` now, in this thread, and wrap its outcome in a finished future."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(function(*args, **kwargs))
    except Exception as error:  # the caller decides what a failed item means
        future.set_exception(error)
    return future


def outcomes(
    finished: Iterable[tuple[Item, Any]], on_error: Callable[[Item, Exception], Any]
) -> Iterator[tuple[Item, Any]]:
    """``(item, result)`` for each finished ``(item, future)``; a task that raised gives ``on_error(item, error)``.

    One failed item (retries exhausted, a bug, a lost worker) is recorded by ``on_error`` and the run
    goes on. The future is dropped before the result is handed on (see :func:`as_completed_bounded`).
    """
    for item, future in finished:
        try:
            result = future.result()
        except Exception as error:  # the item fails, the others go on
            result = on_error(item, error)
        del future
        yield item, result


def window_for(client, refresh_s: float = _WINDOW_REFRESH_S) -> Callable[[], int]:
    """Items to keep in flight: two per worker thread, so no worker waits for the driver; one in this process.

    The cluster's size is asked again at most every ``refresh_s``, so a
    cluster whose workers join during the run (a batch scheduler's queue,
    adaptive scaling) gets work for all of them, at no per-item cost.
    """
    if client is None:
        return lambda: 1
    asked_at, threads = -math.inf, 0

    def window() -> int:
        nonlocal asked_at, threads
        if time.monotonic() - asked_at >= refresh_s:
            asked_at, threads = time.monotonic(), sum(client.nthreads().values())
        return max(2, 2 * threads)

    return window


def submit_on_flow_runner(client, function: Callable[..., Any]) -> Callable[..., Any]:
    """A ``submit(*args, **kwargs)`` that runs ``function`` on ``client``'s cluster, or here without one.

    Dask futures are submitted impure (every call runs, even with equal
    arguments) and keep the function's name as key prefix, as Dask's
    dashboard and scheduler show it.
    """
    if client is None:
        return lambda *args, **kwargs: _run_here(function, *args, **kwargs)
    return lambda *args, **kwargs: client.submit(function, *args, pure=False, **kwargs)


def as_completed_bounded(
    submit: Callable[[Item], Any],
    items: Iterable[Item],
    window: int | Callable[[], int],
    started: Iterable[tuple[Item, Any]] = (),
) -> Iterator[tuple[Item, Any]]:
    """Yield ``(item, future)`` for every item as its future finishes, with at most ``window`` in flight.

    ``window`` is a number, or a function asked before each submission (see
    :func:`window_for`). ``started`` holds ``(item, future)`` pairs submitted
    before (the first slides a command started early): they count in the
    window and come back like the others.

    ``submit`` starts one item and returns its future (a Dask, Prefect or
    ``concurrent.futures`` future: anything with ``add_done_callback``).
    Items are submitted lazily from ``items``, so a generator of 6,000 slides
    is never materialised as futures; the caller's ``future.result()`` is the
    last reference to each finished future, which frees its result on the
    worker as soon as the caller drops it.
    """
    size = window if callable(window) else lambda: window
    if size() < 1:
        raise ValueError(f"window must be at least 1, got {size()}")
    finished: queue.SimpleQueue = queue.SimpleQueue()
    pending = iter(items)
    in_flight = 0
    for item, future in started:
        in_flight += 1
        future.add_done_callback(lambda done, item=item: finished.put((item, done)))

    def top_up() -> None:
        nonlocal in_flight
        while in_flight < size():
            item = next(pending, _DONE)
            if item is _DONE:
                return
            future = submit(item)
            in_flight += 1
            future.add_done_callback(lambda done, item=item: finished.put((item, done)))

    top_up()
    while in_flight:
        item, future = finished.get()
        in_flight -= 1
        yield item, future  # before topping up: an item run in this process is reported as soon as it ends
        del future  # the caller's reference, if any, is now the last one
        top_up()
