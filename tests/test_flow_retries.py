"""Transient I/O errors are retried; other crashes are recorded without stopping the run."""

from __future__ import annotations

from collections import Counter

import flows.tiling_flow as tile_tcga_module
import flows.tiling_task as tiling_task_module
from storage.manifest import read_manifest


def test_transient_io_error_is_retried_and_a_crash_is_recorded(slide_dir, tmp_path, prefect_api, monkeypatch):
    calls: Counter = Counter()
    real_tile_slide = tiling_task_module.tile_slide

    def flaky_tile_slide(spec, store, config):
        calls[spec.slide_id] += 1
        if spec.slide_id == "CMU-1-Small-Region" and calls[spec.slide_id] == 1:
            raise OSError(5, "Input/output error (NFS server not responding)")
        if spec.slide_id == "OS-1-detail":
            raise RuntimeError("bug in a backend")
        return real_tile_slide(spec, store, config)

    monkeypatch.setattr(tiling_task_module, "tile_slide", flaky_tile_slide)
    monkeypatch.setattr(tiling_task_module, "RETRY_DELAY_S", 0.0)
    out = tmp_path / "tiles.zarr"
    summary = tile_tcga_module.tile_tcga(slides=str(slide_dir), out=str(out))
    assert calls == {"CMU-1-Small-Region": 2, "OS-1-detail": 1}
    assert (summary["done"], summary["failed"]) == (1, 1)
    manifest = read_manifest(out).set_index("slide_id")
    assert manifest.loc["CMU-1-Small-Region", "status"] == "done"
    crashed = manifest.loc["OS-1-detail"]
    assert crashed["status"] == "failed" and "bug in a backend" in crashed["error"]
