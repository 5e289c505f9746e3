"""The submission window: every item once, never more than the window in flight, items drawn lazily."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flows.retries import retrying
from flows.submission import as_completed_bounded, outcomes, submit_on_flow_runner
from tiling.errors import SlideError


def test_window_bounds_work_in_flight_and_every_item_comes_back_once():
    lock, running, most = threading.Lock(), [0], [0]

    def work(item: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002 * (item % 3))
        with lock:
            running[0] -= 1
        if item == 7:
            raise ValueError("bad item 7")
        return item * item

    drawn = []

    def items():
        for item in range(40):
            drawn.append(item)
            yield item

    results, errors = {}, {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for item, future in as_completed_bounded(lambda i: pool.submit(work, i), items(), window=3):
            assert len(drawn) <= len(results) + len(errors) + 1 + 3  # drawn lazily, never far ahead
            try:
                results[item] = future.result()
            except ValueError as error:
                errors[item] = str(error)
    assert most[0] <= 3
    assert results == {i: i * i for i in range(40) if i != 7}
    assert errors == {7: "bad item 7"}


def test_without_a_cluster_items_run_here_one_at_a_time_and_report_at_once():
    submit = submit_on_flow_runner(None, lambda item: item + 1)
    seen = []
    for item, future in as_completed_bounded(submit, itertools.count(), window=1):
        seen.append((item, future.result()))
        if item == 2:
            break
    assert seen == [(0, 1), (1, 2), (2, 3)]  # an endless source is fine: nothing is drawn ahead


def test_window_must_hold_an_item():
    with pytest.raises(ValueError, match="at least 1"):
        list(as_completed_bounded(lambda item: item, [1], window=0))


def test_retrying_repeats_transient_io_errors_only():
    calls = []

    def flaky(kind: str) -> str:
        calls.append(kind)
        if kind == "io" and len(calls) < 3:
            raise OSError(5, "Input/output error")
        if kind == "slide":
            raise SlideError("slide.svs", "unreadable")
        return kind

    assert retrying(flaky, retries=2, delay_s=0)("io") == "io" and len(calls) == 3
    calls.clear()
    with pytest.raises(SlideError):
        retrying(flaky, retries=2, delay_s=0)("slide")
    assert len(calls) == 1


def test_a_raising_item_becomes_its_recorded_failure_and_the_others_still_come_back():
    def work(item: int) -> int:
        if item == 2:
            raise ValueError(f"slide {item} is broken")
        return item * 10

    failures = []

    def on_error(item: int, error: Exception) -> str:
        failures.append(item)
        return f"failed: {error}"

    with ThreadPoolExecutor(max_workers=2) as pool:
        finished = as_completed_bounded(lambda item: pool.submit(work, item), range(4), 2)
        results = dict(outcomes(finished, on_error))
    assert results == {0: 0, 1: 10, 2: "failed: slide 2 is broken", 3: 30}
    assert failures == [2]


def test_items_started_before_count_in_the_window_and_come_back_with_the_others():
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=4) as pool:
        started = [(item, pool.submit(release.wait)) for item in ("a", "b")]
        submitted = []

        def submit(item: str):
            submitted.append(item)
            return pool.submit(lambda: item)

        finished = as_completed_bounded(submit, iter(["c", "d", "e"]), window=3, started=started)
        first_item, _ = next(finished)  # only one more fits beside the two started
        assert (first_item, submitted) == ("c", ["c"])
        release.set()
        rest = [item for item, _ in finished]
    assert sorted([first_item, *rest]) == ["a", "b", "c", "d", "e"]
    assert submitted == ["c", "d", "e"]
