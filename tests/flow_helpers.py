"""Helpers for tests that run flows and compare stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

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
