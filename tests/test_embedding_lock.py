"""One embedding run per store: the run lock is taken before preparation, by the flow and by torchrun's rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import psutil
import pytest

from pipeline.embed import EmbeddingSettings, prepared_store
from storage.embedding_store import EmbeddingStore
from storage.run_lock import LOCK_NAME, LockOwner, read_owner
from storage.tile_store import StoreError
from storage.tile_units import open_tile_source
from tests.test_store_index import new_store, write_slide

REPO = Path(__file__).resolve().parents[1]
SETTINGS = EmbeddingSettings(model="tiny-student", batch_size=4, loader_workers=0, dtype="float32")


@pytest.fixture
def tiles(tmp_path):
    store = new_store(tmp_path / "t.zarr")
    write_slide(store, "a", 3, tile_px=224)
    return store


def test_a_second_run_is_refused_before_it_prepares_anything(tiles, tmp_path):
    out = tmp_path / "e.zarr"
    with prepared_store(out, SETTINGS, open_tile_source(tiles.root)) as first:
        units_file = first.units_path.read_bytes()
        write_slide(tiles, "late", 3, tile_px=224)  # would make the second run add a group and rewrite the units
        with pytest.raises(StoreError, match=f"in use by process {os.getpid()} on host"):
            with prepared_store(out, SETTINGS, open_tile_source(tiles.root)):
                pytest.fail("the second run got the lock")
        assert first.units_path.read_bytes() == units_file
        assert not (first.slides_dir / "late").exists()
    assert not (first.staging_dir / LOCK_NAME).exists()  # released when the first run's block ended
    with prepared_store(out, SETTINGS, open_tile_source(tiles.root)) as rerun:
        assert [u.group for u in rerun.read_units()] == ["a", "a", "late", "late"]


def test_a_lock_left_by_a_dead_run_is_taken_over(tiles, tmp_path):
    out = tmp_path / "e.zarr"
    with prepared_store(out, SETTINGS, open_tile_source(tiles.root)) as store:
        lock = store.staging_dir / LOCK_NAME
        held = lock.read_bytes()
    dead = replace(LockOwner.of_this_process(), pid=_a_dead_pid(), command="torchrun -m pipeline.embed")
    lock.write_text(json.dumps(asdict(dead)))
    with prepared_store(out, SETTINGS, open_tile_source(tiles.root)):
        owner = read_owner(lock)
        assert owner is not None and owner.pid == os.getpid() and lock.read_bytes() != held


def _a_dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    assert not psutil.pid_exists(process.pid)
    return process.pid


def _torchrun(tiles: Path, out: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "pipeline.embed",
        "--tiles",
        str(tiles),
        "--out",
        str(out),
        "--model",
        SETTINGS.model,
        "--dtype",
        SETTINGS.dtype,
        "--batch-size",
        "4",
        "--loader-workers",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_is_refused_on_every_rank_while_another_run_holds_the_store(tiles, tmp_path):
    out = tmp_path / "e.zarr"
    with prepared_store(out, SETTINGS, open_tile_source(tiles.root)) as store:
        store.units_path.unlink()  # so a preparation by the refused run would show
        refused = _torchrun(tiles.root, out)
        assert refused.returncode != 0
        for rank in (0, 1):  # rank 1 is told too, instead of waiting on the barrier
            assert f"rank {rank}: {out.resolve()} is in use by process {os.getpid()}" in refused.stderr
        assert not store.units_path.exists() and not store.done_keys()
    finished = _torchrun(tiles.root, out)
    assert finished.returncode == 0, finished.stderr[-3000:]
    store = EmbeddingStore(out)
    assert store.done_keys() == {u.key for u in store.read_units()} == {"a.0", "a.1"}
    assert not (store.staging_dir / LOCK_NAME).exists()  # rank 0 released it after both ranks finished
