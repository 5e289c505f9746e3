"""The flow survives bad slides and hostile slide lists, and records every outcome."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from flows.tile_tcga import main
from storage.manifest import read_manifest
from storage.tile_store import TileStore
from tests.conftest import CMU_SVS, write_tiff


@pytest.fixture
def bad_slides(tmp_path, cmu_pixels):
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(CMU_SVS, folder / "good.svs")
    (folder / "empty.svs").write_bytes(b"")
    (folder / "truncated.svs").write_bytes(CMU_SVS.read_bytes()[: CMU_SVS.stat().st_size // 3])
    (folder / "text.svs").write_text("this is a clinical note, not a slide\n")
    write_tiff(folder / "no-mpp.tif", cmu_pixels[1024:2048, 1000:2024], None)
    rng = np.random.default_rng(0)
    glass = (np.full((2048, 2048, 3), 235) + rng.integers(-6, 7, (2048, 2048, 3))).astype(np.uint8)
    write_tiff(folder / "blank.tif", glass, 0.5)
    return folder


def test_each_bad_slide_is_recorded_and_the_others_complete(bad_slides, tmp_path, prefect_api):
    out = tmp_path / "tiles.zarr"
    assert main(["--slides", str(bad_slides), "--out", str(out), "--workers", "1"]) == 0
    manifest = read_manifest(out).set_index("slide_id")
    assert manifest.loc["good", "status"] == "done" and manifest.loc["good", "n_tiles"] > 30
    assert manifest.loc["blank", "status"] == "done" and manifest.loc["blank", "n_tiles"] == 0
    assert manifest.loc["blank", "message"] == "no tissue found"
    expected_errors = {
        "empty": ("UnreadableSlideError", "empty"),
        "text": ("UnreadableSlideError", "not a readable slide"),
        "no-mpp": ("MissingMppError", "--mpp-override"),
    }
    for slide_id, (error_type, words) in expected_errors.items():
        row = manifest.loc[slide_id]
        assert (row["status"], row["error_type"]) == ("failed", error_type), slide_id
        assert words in row["error"] and slide_id in row["error"]
    truncated = manifest.loc["truncated"]
    assert truncated["status"] == "failed"
    assert truncated["error_type"] in ("UnreadableSlideError", "SlideReadError")
    assert TileStore(out).complete_slide_ids() == ["blank", "good"]
    assert not [p for p in (out / "staging").iterdir() if p.is_dir()]
    summary = _latest_artifact("tile-tcga-summary")
    assert "| 6 | 2 | 0 | 4 |" in summary  # slides, tiled, already complete, failed
    assert all(f"| {slide_id} |" in summary for slide_id in expected_errors)


def _latest_artifact(key: str) -> str:
    """The newest Prefect artifact with ``key``, as the UI would show it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    return artifacts[0].data


def test_csv_mpp_column_rescues_a_slide_without_mpp(bad_slides, tmp_path, prefect_api):
    csv = tmp_path / "slides.csv"
    csv.write_text(f"path,slide_id,mpp\n{bad_slides / 'no-mpp.tif'},rescued,0.5\n")
    out = tmp_path / "tiles.zarr"
    assert main(["--slides", str(csv), "--out", str(out), "--workers", "1"]) == 0
    row = read_manifest(out).set_index("slide_id").loc["rescued"]
    assert row["status"] == "done" and row["n_tiles"] > 0


def test_hostile_and_clashing_ids_are_refused_without_writing_outside(tmp_path, prefect_api):
    work = tmp_path / "work"
    work.mkdir()
    csv = work / "slides.csv"
    rows = [
        "path,slide_id",
        f"{CMU_SVS},../escape",
        f"{CMU_SVS},a/b",
        f'{CMU_SVS},"bell\x07"',
        f"{CMU_SVS},twin",
        f"{CMU_SVS},twin",
        f"{CMU_SVS},fine",
    ]
    csv.write_text("\n".join(rows) + "\n")
    out = work / "tiles.zarr"
    assert main(["--slides", str(csv), "--out", str(out), "--workers", "1"]) == 0
    assert sorted(p.name for p in work.iterdir()) == ["slides.csv", "tiles.zarr"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert TileStore(out).complete_slide_ids() == ["fine"]
    manifest = read_manifest(out)
    refused = manifest[manifest["status"] == "failed"]
    assert len(refused) == 5
    assert set(refused["error_type"]) == {"InvalidSlideIdError"}
    requested = sorted(extra["requested_slide_id"] for extra in refused["extra"])
    assert requested == sorted(["../escape", "a/b", "bell\x07", "twin", "twin"])
    clashes = [error for error in refused["error"] if "shared by" in error]
    assert len(clashes) == 2 and all("#4" in error and "#5" in error for error in clashes)


def test_unreadable_slide_list_fails_the_run(tmp_path, prefect_api):
    missing = tmp_path / "nowhere"
    assert main(["--slides", str(missing), "--out", str(tmp_path / "t.zarr"), "--workers", "1"]) == 2
    csv = tmp_path / "bad.csv"
    csv.write_text("file\nx.svs\n")
    assert main(["--slides", str(csv), "--out", str(tmp_path / "t.zarr"), "--workers", "1"]) == 2
