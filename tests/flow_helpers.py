"""Helpers for tests that run flows and compare stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

from storage.aligned_store import AlignedTileStore
from storage.manifest import SlideRecord, write_record
from storage.tile_store import TileStore

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, api_url: str, module: str = "flows.tile_tcga", **popen) -> subprocess.Popen:
    """Start ``python -m <module>`` (a flow's command line) against the test session's Prefect API."""
    env = {**os.environ, "PREFECT_API_URL": api_url}
    return subprocess.Popen(
        [sys.executable, "-m", module, "--no-progress", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def store_contents(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decoded tiles and coordinates of every complete slide, by slide id."""
    store = TileStore(root)
    contents = {}
    for slide_id in store.complete_slide_ids():
        group = zarr.open_group(store.slide_path(slide_id), mode="r")
        contents[slide_id] = (group["tiles"][:], group["coords"][:])
    return contents


def assert_same_stores(a: Path, b: Path) -> None:
    left, right = store_contents(a), store_contents(b)
    assert sorted(left) == sorted(right)
    for slide_id in left:
        np.testing.assert_array_equal(left[slide_id][1], right[slide_id][1], err_msg=slide_id)
        np.testing.assert_array_equal(left[slide_id][0], right[slide_id][0], err_msg=slide_id)


def write_two_condition_store(root: Path, tiles: np.ndarray, coords: np.ndarray) -> Path:
    """An extracted aligned store of two conditions, ``A`` (``tiles``) and ``B`` (the tiles mirrored).

    ``tiles`` is ``[16, 224, 224, 3]`` uint8; ``coords`` ``[2, 16, 2]`` level-0 corners per condition.
    """
    store = AlignedTileStore.create_or_open(root, {"test": True})
    table = [{"name": n, "staining": "GMH", "scanner": n, "mpp_um": 0.5} for n in ("A", "B")]
    store.start_plan(
        table,
        {},
        coords,
        np.ones((2, 16)),
        np.zeros((16, 2), np.int32),
        tile_size_px=224,
        mpp_um=0.5,
        tiles_per_shard=16,
        jpeg_quality=90,
        jpeg_subsampling="444",
    )
    for index, name in enumerate(("A", "B")):
        store.write_condition_tiles(index, 0, tiles[:, :, ::-1] if index else tiles)
        write_record(store, SlideRecord(name, "", "extracted", extra={"plan_id": store.read_plan()["plan_id"]}))
    return store.root


def linked_slides(folder: Path, slide: Path, count: int) -> Path:
    """``count`` slides in ``folder`` that are hard links to ``slide``: a run of many slides at no disk cost."""
    folder.mkdir()
    for index in range(count):
        os.link(slide, folder / f"slide-{index:02d}{slide.suffix}")
    return folder
