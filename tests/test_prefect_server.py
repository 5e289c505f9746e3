"""The temporary Prefect server: a database of its own, gone with the command however the command ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.flow_helpers import REPO

# A flow command whose run waits: it prints the API URL once the server is up, then sleeps.
_COMMAND = (
    "import time, os; from flows.cli import run_flow_command\n"
    "def run():\n"
    "    print('api', os.environ['PREFECT_API_URL'], flush=True); time.sleep(120)\n"
    "run_flow_command('python -m test', 'json', run)\n"
)


def _start_command(tmp_path: Path) -> tuple[subprocess.Popen, str, list[psutil.Process], Path]:
    """The command, its API URL, the processes it started (watchdog, server) and the server's home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env["PREFECT_HOME"] = str(tmp_path / "user-prefect-home")  # the user's persistent home
    command = subprocess.Popen(
        [sys.executable, "-c", _COMMAND], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    line = command.stdout.readline()
    assert line.startswith("api "), line + command.stdout.read()
    helpers = psutil.Process(command.pid).children(recursive=True)
    watchdog = next(p for p in helpers if "server_watchdog.py" in " ".join(p.cmdline()))
    home = Path(next(p for p in helpers if p.pid != watchdog.pid).environ()["PREFECT_HOME"])
    return command, line.split()[1], helpers, home


def _answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _wait_gone(processes: list[psutil.Process], timeout_s: float = 60) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_server_and_its_database_go_with_the_command(tmp_path: Path, how: str) -> None:
    command, api_url, helpers, home = _start_command(tmp_path)
    try:
        assert _answers(api_url) and (home / "prefect.db").is_file()
        assert home.parent == Path(tempfile.gettempdir()) and home.name.startswith("distillpath-prefect-")
        assert not (tmp_path / "user-prefect-home" / "prefect.db").exists()  # the user's database is untouched
        os.kill(command.pid, getattr(signal, how))
        command.wait(timeout=60)
        assert _wait_gone(helpers) == [], f"still running after {how} of the command"
        assert not _answers(api_url)
        deadline = time.monotonic() + 30
        while home.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not home.exists()
    finally:
        command.kill()
        for process in helpers:
            if process.is_running():
                process.kill()


def test_runs_against_the_temporary_server_send_no_heartbeats(prefect_api: str) -> None:
    from prefect.settings import get_current_settings

    # nothing outlives the run to read them, and the engine's wait for their thread cost up to 1 s a run
    assert get_current_settings().flows.heartbeat_frequency is None
