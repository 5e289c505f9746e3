"""The run lock: one of two racing processes wins every time, the owner alone releases, stale locks are judged."""

from __future__ import annotations

import json
import multiprocessing
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import psutil
import pytest

from flows.break_lock import main as break_lock
from storage.run_lock import LockHeldError, LockOwner, RunLock, read_owner
from storage.tile_store import StoreError, TileStore
from tiling.config import TilingConfig

TRIALS = 100


def _contender(path: str, barrier, results, trials: int) -> None:
    """One of two processes: at each trial, both try the lock at the same instant."""
    import os

    lock = RunLock(Path(path), "the store")
    for trial in range(trials):
        barrier.wait()
        try:
            lock.acquire()
            results.put((trial, os.getpid(), True, ""))
        except LockHeldError as error:
            results.put((trial, os.getpid(), False, str(error)))
        barrier.wait()  # the loser has looked before the winner lets go
        lock.release()
        barrier.wait()


@pytest.mark.slow
def test_two_processes_racing_for_the_lock_one_wins_every_time(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    path = tmp_path / "staging" / "run.lock"
    processes = [context.Process(target=_contender, args=(str(path), barrier, results, TRIALS)) for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * TRIALS)]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    by_trial: dict[int, list] = {}
    for trial, pid, won, message in outcomes:
        by_trial.setdefault(trial, []).append((pid, won, message))
    winners_per_trial = [sum(won for _, won, _ in entries) for entries in by_trial.values()]
    assert len(by_trial) == TRIALS and winners_per_trial == [1] * TRIALS
    for entries in by_trial.values():
        (winner,) = [pid for pid, won, _ in entries if won]
        (message,) = [message for _, won, message in entries if not won]
        assert f"process {winner} on host {socket.gethostname()}" in message
    assert not path.exists()  # every winner released its lock


def _write_lock(path: Path, owner: LockOwner) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(owner)))


@pytest.fixture
def sleeper():
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_a_live_owner_on_this_host_is_named_and_keeps_the_lock(tmp_path: Path, sleeper) -> None:
    store = TileStore.create_or_open(tmp_path / "t.zarr", TilingConfig().model_dump())
    lock_path = store.staging_dir / "run.lock"
    owner = replace(
        LockOwner.of_this_process(),
        pid=sleeper.pid,
        process_started=psutil.Process(sleeper.pid).create_time(),
        command="python -m flows.tile_tcga",
    )
    _write_lock(lock_path, owner)
    with pytest.raises(StoreError, match=f"in use by process {sleeper.pid} on host .*flows.tile_tcga"):
        store.acquire_run_lock()
    with pytest.raises(StoreError, match="in use by"):
        TileStore.create_or_open(store.root, TilingConfig().model_dump(), overwrite=True)
    assert break_lock([str(store.root), "--force"]) == 2  # alive here: not even --force breaks it
    assert read_owner(lock_path) == owner


@pytest.mark.slow
def test_a_dead_owner_on_this_host_is_stale_and_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    code = f"from storage.run_lock import RunLock; RunLock({str(path)!r}, 's').acquire(); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)  # holds the lock, then dies
    dead = read_owner(path)
    assert dead is not None and dead.is_gone() is True
    lock = RunLock(path, "s")
    lock.acquire()
    assert read_owner(path).token == lock.owner.token != dead.token


@pytest.mark.slow
def test_a_killed_owner_not_yet_reaped_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _write_lock(
        path,
        replace(LockOwner.of_this_process(), pid=owner.pid, process_started=psutil.Process(owner.pid).create_time()),
    )
    owner.kill()
    _wait_zombie(owner.pid)
    try:
        RunLock(path, "s").acquire()  # a zombie: ended, its exit status not collected yet
    finally:
        owner.wait()


def _wait_zombie(pid: int) -> None:
    process = psutil.Process(pid)
    for _ in range(600):
        if process.status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not end")


def test_a_reused_pid_does_not_keep_a_dead_runs_lock(tmp_path: Path, sleeper) -> None:
    path = tmp_path / "run.lock"
    started = psutil.Process(sleeper.pid).create_time()
    _write_lock(path, replace(LockOwner.of_this_process(), pid=sleeper.pid, process_started=started - 3600))
    RunLock(path, "s").acquire()  # the pid lives, but it is another, younger process


def test_a_lock_from_another_host_says_how_to_check_and_break_it(tmp_path: Path, capsys) -> None:
    store = TileStore.create_or_open(tmp_path / "t.zarr", TilingConfig().model_dump())
    lock_path = store.staging_dir / "run.lock"
    _write_lock(lock_path, replace(LockOwner.of_this_process(), host="node-17", pid=4242))
    with pytest.raises(StoreError) as error:
        store.acquire_run_lock()
    message = str(error.value)
    assert "process 4242 on host node-17" in message and "ps -p 4242" in message
    assert f"python -m flows.break_lock {store.root} --force" in message
    assert break_lock([str(store.root)]) == 2 and lock_path.exists()
    assert break_lock([str(store.root), "--force"]) == 0 and not lock_path.exists()
    assert "removed the lock of process 4242 on host node-17" in capsys.readouterr().out
    store.acquire_run_lock()


def test_only_the_owner_releases(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    first = RunLock(path, "s")
    first.acquire()
    taken_over = replace(LockOwner.of_this_process(), token="another-run")
    _write_lock(path, taken_over)  # as if the lock had been broken and taken by another run
    first.release()
    assert read_owner(path) == taken_over


def test_an_unreadable_lock_is_never_broken_silently(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    path.write_text("myhost 123")  # the format of older versions
    with pytest.raises(LockHeldError, match="unreadable lock"):
        RunLock(path, "s").acquire()
