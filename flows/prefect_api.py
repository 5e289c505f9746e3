"""A Prefect API for command-line runs: the configured server, or a temporary local one.

Without ``PREFECT_API_URL``, Prefect would start a temporary API server inside
every process that runs a task, Dask workers included (~10 s each). Instead
the command line starts one ``prefect server start`` on a free loopback port
before it imports anything heavy, so the server's ~5 s start overlaps the
imports, and exports its address to the run and to the worker processes it
spawns. This module imports nothing from Prefect so that it can run first.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator

_START_TIMEOUT_S = 90.0


class PrefectServerError(RuntimeError):
    """The temporary Prefect server did not start."""


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TemporaryPrefectServer:
    """``prefect server start`` on loopback, without UI, scheduler or telemetry, for one run."""

    def __init__(self) -> None:
        self.port = _free_loopback_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._log = tempfile.TemporaryFile()
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-ui", "--analytics-off", "--no-scheduler", "--no-late-runs", "--log-level", "WARNING"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def wait_until_ready(self) -> str:
        """Block until the API answers its health check; return its URL."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrefectServerError(f"temporary Prefect server exited with {self._process.returncode}: {self._output()}")
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
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
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
        from prefect.settings import PREFECT_API_URL, temporary_settings

        if PREFECT_API_URL.value():  # configured in the user's Prefect profile
            server.stop()
            server = None
            yield PREFECT_API_URL.value()
            return
        api_url = server.wait_until_ready()
        os.environ["PREFECT_API_URL"] = api_url  # inherited by Dask worker processes started later
        try:
            with temporary_settings({PREFECT_API_URL: api_url}):
                yield api_url
        finally:
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)  # send the last log lines before their server stops
            os.environ.pop("PREFECT_API_URL", None)
    finally:
        if server is not None:
            server.stop()
