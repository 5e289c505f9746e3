"""Bad and hostile inputs through the real command lines: no traceback, no write outside --out, no tile lost or doubled.

The matrix: corrupt, unsupported, pixel-size-less and tissue-less slides (issue 2), slide ids that are
the store's own names or differ only in case, a broken link, a CSV with a byte-order mark, a header-only
CSV, a store locked by another run, and a checkpoint that would run code. Each user mistake must end
in a one-line reason (per slide in the manifest, or exit code 2 for the run), a fixed input must
leave no trace of the old refusal, and every complete slide must hold each of its tiles once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline.models import build_model
from storage.manifest import read_manifest
from storage.run_lock import RunLock
from storage.tile_store import TileStore
from tests.conftest import CMU_SVS, write_tiff
from tests.flow_helpers import run_cli

pytestmark = pytest.mark.slow
CMU_TILES = 50  # the CMU sample at its recorded 0.499 µm/px, tiled at 0.5 µm/px


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under ``root`` outside ``skip``: what a run must not change."""
    return {
        str(path): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in root.rglob("*")
        if skip not in path.parents and path != skip and not path.is_dir()
    }


def _run(*args: str, api_url: str, module: str = "flows.tile_tcga") -> tuple[int, str]:
    process = run_cli(*args, api_url=api_url, module=module)
    output, _ = process.communicate(timeout=600)
    assert "Traceback" not in output, output
    return process.returncode, output


def _assert_each_tile_once(out: Path) -> None:
    """Every complete slide: as many tiles as its record says, each grid position once."""
    store = TileStore(out)
    manifest = read_manifest(out).set_index("slide_id")
    for slide_id in store.complete_slide_ids():
        group = zarr.open_group(store.slide_path(slide_id), mode="r")
        coords = group["coords"][:]
        assert len(coords) == group["tiles"].shape[0] == manifest.loc[slide_id, "n_tiles"], slide_id
        assert len(np.unique(coords, axis=0)) == len(coords), f"{slide_id}: a tile stored twice"


@pytest.fixture
def hostile_folder(tmp_path, cmu_pixels) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(CMU_SVS, folder / "good.svs")
    (folder / "truncated.svs").write_bytes(CMU_SVS.read_bytes()[: CMU_SVS.stat().st_size // 3])
    (folder / "unsupported.svs").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    write_tiff(folder / "no-mpp.tif", cmu_pixels[1024:2048, 1000:2024], None)
    rng = np.random.default_rng(0)
    glass = (np.full((1024, 1024, 3), 235) + rng.integers(-6, 7, (1024, 1024, 3))).astype(np.uint8)
    write_tiff(folder / "blank.tif", glass, 0.5)
    shutil.copy(CMU_SVS, folder / "zarr.json.svs")  # its id would be the store's own metadata file
    shutil.copy(CMU_SVS, folder / "Case.svs")
    shutil.copy(CMU_SVS, folder / "case.svs")  # one folder with Case on macOS or an SMB share
    (folder / "gone.svs").symlink_to(tmp_path / "moved-away.svs")
    return folder


def test_a_hostile_slide_folder_then_fixed(hostile_folder, tmp_path, prefect_api):
    out = tmp_path / "tiles.zarr"
    before = _snapshot(tmp_path, out)
    code, output = _run("--slides", str(hostile_folder), "--out", str(out), "--workers", "1", api_url=prefect_api)
    assert code == 0, output
    assert _snapshot(tmp_path, out) == before  # nothing written, moved or touched outside --out
    manifest = read_manifest(out)
    by_id = manifest.set_index("slide_id")
    assert by_id.loc["good", "n_tiles"] == CMU_TILES and by_id.loc["blank", "message"] == "no tissue found"
    failed = {row.slide_id: row.error_type for row in manifest.itertuples() if row.status == "failed"}
    assert {failed[k] for k in ("truncated", "unsupported")} <= {"UnreadableSlideError", "SlideReadError"}
    assert failed["no-mpp"] == "MissingMppError"
    refused = {
        row.extra["requested_slide_id"]: row.error
        for row in manifest.itertuples()
        if row.slide_id.startswith("rejected-")
    }
    assert set(refused) == {"zarr.json", "Case", "case", "gone"}
    assert "name the store uses for itself" in refused["zarr.json"] and "broken symbolic link" in refused["gone"]
    assert TileStore(out).complete_slide_ids() == ["blank", "good"]
    _assert_each_tile_once(out)

    # The user fixes the folder: renames the hostile file, drops the twin and the dead link, gives an mpp.
    (hostile_folder / "zarr.json.svs").rename(hostile_folder / "renamed.svs")
    (hostile_folder / "case.svs").unlink()
    (hostile_folder / "gone.svs").unlink()
    good_created = zarr.open_group(TileStore(out).slide_path("good"), mode="r").attrs["created_at"]
    code, output = _run(
        "--slides",
        str(hostile_folder),
        "--out",
        str(out),
        "--workers",
        "1",
        "--mpp-override",
        "0.25",
        api_url=prefect_api,
    )
    assert code == 0, output
    manifest = read_manifest(out).set_index("slide_id")
    assert not [key for key in manifest.index if key.startswith("rejected-")]  # old refusals are gone
    assert manifest.loc["renamed", "n_tiles"] == manifest.loc["Case", "n_tiles"] == CMU_TILES  # 0.499 kept
    assert manifest.loc["no-mpp", "status"] == "done"  # the override fills in a missing pixel size only
    assert zarr.open_group(TileStore(out).slide_path("good"), mode="r").attrs["created_at"] == good_created
    assert TileStore(out).complete_slide_ids() == ["Case", "blank", "good", "no-mpp", "renamed"]
    _assert_each_tile_once(out)


def test_unusable_slide_lists_and_a_locked_store_end_the_run_with_one_line(tmp_path, prefect_api):
    header_only = tmp_path / "slides.csv"
    header_only.write_bytes("\ufeffpath,slide_id,mpp\r\n".encode())  # Excel's "CSV UTF-8", no rows
    code, output = _run("--slides", str(header_only), "--out", str(tmp_path / "a.zarr"), api_url=prefect_api)
    assert code == 2 and "header but no rows" in output
    assert not (tmp_path / "a.zarr").exists()

    listed = tmp_path / "listed.csv"
    listed.write_bytes(f"\ufeffpath,slide_id\r\n{CMU_SVS},cmu\r\n".encode())
    out = tmp_path / "locked.zarr"
    TileStore.create_or_open(out, _default_tiling())
    holder = RunLock(out / "staging" / "run.lock", str(out))
    holder.acquire()  # another run, alive: this test process
    try:
        code, output = _run("--slides", str(listed), "--out", str(out), "--workers", "1", api_url=prefect_api)
    finally:
        holder.release()
    assert code == 2 and f"in use by process {os.getpid()}" in output
    assert TileStore(out).complete_slide_ids() == []
    code, output = _run("--slides", str(listed), "--out", str(out), "--workers", "1", api_url=prefect_api)
    assert code == 0 and TileStore(out).complete_slide_ids() == ["cmu"]  # BOM read, lock released


def _default_tiling() -> dict:
    from tiling.config import TilingConfig

    return TilingConfig().model_dump()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def test_a_checkpoint_that_would_run_code_stops_the_embedding_run(shipped_tile_store, tmp_path, prefect_api):
    marker = tmp_path / "pwned"
    weights = tmp_path / "student.pt"
    torch.save({"model": build_model("tiny-student").state_dict(), "hook": _Payload(marker)}, weights)
    code, output = _run(
        "--tiles",
        str(shipped_tile_store),
        "--out",
        str(tmp_path / "emb.zarr"),
        "--model",
        "tiny-student",
        "--weights",
        str(weights),
        "--device",
        "cpu",
        api_url=prefect_api,
        module="flows.embed",
    )
    assert code == 2 and "refused: the checkpoint holds Python objects besides tensors (exec)" in output
    assert not marker.exists()
