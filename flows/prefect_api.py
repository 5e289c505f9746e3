"""A Prefect API for command-line runs: the configured server, or a temporary local one.

Without ``PREFECT_API_URL``, Prefect would start a temporary API server inside
every process that runs a task, Dask workers included (~10 s each). Instead
the command line starts one ``prefect server start`` on a free loopback port
before it imports anything heavy, so the server's ~5 s start overlaps the
imports, and exports its address to the run and to the worker processes it
spawns. The server keeps its database in a temporary folder of its own,
deleted with it, and is stopped however the command ends (see
:mod:`flows.server_watchdog`). This module imports nothing from Prefect so
that it can run first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

_START_TIMEOUT_S = 90.0
_WATCHDOG = Path(__file__).with_name("server_watchdog.py")


class PrefectServerError(RuntimeError):
    """The temporary Prefect server did not start."""


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _private_server_environment(home: str) -> dict[str, str]:
    """The server's environment: a home and a SQLite database of its own, no telemetry, no UI.

    Every database setting of the user's is dropped, so that the temporary
    server can never write into their persistent database (``~/.prefect``, a
    configured Postgres); ``PREFECT_HOME`` also hides their profiles from it.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_SERVER_DATABASE_", "PREFECT_API_DATABASE_"))
        and key not in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH")
    }
    env.update(
        {
            "PREFECT_HOME": home,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
        }
    )
    return env


class TemporaryPrefectServer:
    """``prefect server start`` on loopback for one run, with a private database, removed afterwards.

    The server runs under :mod:`flows.server_watchdog`, which stops it and
    deletes its folder when this process ends, even by ``kill -9``.
    """

    def __init__(self) -> None:
        self.port = _free_loopback_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.home = tempfile.mkdtemp(prefix="distillpath-prefect-")
        self._log = tempfile.TemporaryFile()
        server = [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-ui",
            "--analytics-off",
            "--no-scheduler",
            "--no-late-runs",
            "--log-level",
            "WARNING",
        ]
        self._watchdog = subprocess.Popen(
            [sys.executable, str(_WATCHDOG), str(os.getpid()), self.home, "--", *server],
            env=_private_server_environment(self.home),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C is for this process only
        )

    def wait_until_ready(self) -> str:
        """Block until the API answers its health check; return its URL."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._watchdog.poll() is not None:
                raise PrefectServerError(f"temporary Prefect server exited: {self._output()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=1) as response:
                    if response.status == 200:
                        return self.api_url
            time.sleep(0.1)
        self.stop()
        raise PrefectServerError(f"temporary Prefect server not ready after {_START_TIMEOUT_S:.0f} s: {self._output()}")

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        """Stop the server and delete its database; the watchdog does both, this only asks and waits."""
        if self._watchdog.poll() is None:
            self._watchdog.terminate()
            try:
                self._watchdog.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()  # the server then gets its parent-death signal
                self._watchdog.wait()
        shutil.rmtree(self.home, ignore_errors=True)
        self._log.close()


@contextlib.contextmanager
def prefect_api(while_starting: Callable[[], object] = lambda: None) -> Iterator[str]:
    """Use the configured Prefect API, or start a temporary server and point this process tree at it.

    Yields the API URL in use. ``while_starting`` (typically the import of a
    flow module) runs while the temporary server boots. The server is started
    before Prefect is imported; if Prefect turns out to have a server
    configured in its profile, the temporary one is stopped unused.
    """
    if os.environ.get("PREFECT_API_URL"):
        while_starting()
        yield os.environ["PREFECT_API_URL"]
        return
    server = TemporaryPrefectServer()
    try:
        while_starting()
        from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        if PREFECT_API_URL.value():  # configured in the user's Prefect profile
            server.stop()
            server = None
            yield PREFECT_API_URL.value()
            return
        api_url = server.wait_until_ready()
        _hide_run_links()
        os.environ["PREFECT_API_URL"] = api_url  # inherited by Dask worker processes started later
        try:
            # Flow-run heartbeats let a persistent server tell a crashed run; this server ends with the run, and
            # the engine's wait for the heartbeat thread cost up to 1 s at the end of every flow run.
            with temporary_settings({PREFECT_API_URL: api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                yield api_url
        finally:
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)  # send the last log lines before their server stops
            os.environ.pop("PREFECT_API_URL", None)
    finally:
        if server is not None:
            server.stop()


class _NoRunLinks(logging.Filter):
    """Drops Prefect's "View at http://127.0.0.1:<port>/runs/..." lines: that server has no UI and ends with the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("View at ")


def _hide_run_links() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoRunLinks) for f in logger.filters):
            logger.addFilter(_NoRunLinks())
