"""The driver of a Dask run keeps no growing history: debugging logs of 100 messages, a minute of system samples."""

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


@pytest.mark.parametrize("address", [None, "tcp://127.0.0.1:8786"])
def test_dask_servers_made_for_a_run_keep_a_minute_of_system_samples(monkeypatch, address):
    # Each Dask server (a local run's driver holds the scheduler and a nanny per worker) samples its
    # CPU, memory and I/O twice a second; 7,200 samples by default made the driver grow for an hour.
    from distributed.system_monitor import SystemMonitor

    admin = dask.config.config["distributed"]["admin"]
    monkeypatch.setitem(admin, "system-monitor", {**admin["system-monitor"], "log-length": 7200})
    assert SystemMonitor().maxlen == 7200
    make_task_runner(2, address)
    assert SystemMonitor().maxlen == 120
