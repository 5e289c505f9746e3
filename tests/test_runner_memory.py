"""The driver of a Dask run keeps no per-slide history: Dask's debugging logs are bounded to 100 messages."""

from __future__ import annotations

import dask
import pytest

from flows.runners import make_task_runner


@pytest.mark.parametrize("address", [None, "tcp://127.0.0.1:8786"])
def test_dask_connections_made_for_a_run_remember_only_their_last_100_messages(monkeypatch, address):
    # Each remembered message to a worker holds a slide's task and arguments: 1,000 of them by default
    # made the driver grow with the run (docs/performance.md, "What grew in the driver").
    from distributed.batched import BatchedSend

    admin = dask.config.config["distributed"]["admin"]
    monkeypatch.setitem(admin, "low-level-log-length", 1000)  # Dask's default; restored after the test
    assert BatchedSend(interval="10ms").recent_message_log.maxlen == 1000
    make_task_runner(2, address)
    assert BatchedSend(interval="10ms").recent_message_log.maxlen == 100
    assert dask.config.get("distributed.admin.low-level-log-length") == 100
