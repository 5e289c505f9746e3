"""The manifest reads one consolidated copy of the records, checked against ``status/``, and walks when it must."""

from __future__ import annotations

import logging
import shutil

import pytest

import storage.manifest as manifest_module
from storage.atomic import write_zarr_group_atomic
from storage.manifest import (
    DONE,
    FAILED,
    REJECTED_PREFIX,
    SlideRecord,
    clear_rejected_records,
    read_manifest,
    records_index,
    write_record,
)
from storage.tile_store import TileStore


@pytest.fixture
def store(tmp_path) -> TileStore:
    store = TileStore.create_or_open(tmp_path / "t.zarr", {"tile_size_px": 8})
    for number in range(40):  # more than a slide index merges at once, fewer than a records index does
        write_record(store, SlideRecord(f"s{number:02d}", f"/slides/s{number:02d}.svs", DONE, n_tiles=number))
    write_record(store, SlideRecord("s07", "/slides/s07.svs", FAILED, error="unreadable"))  # a later record wins
    return store


def _no_record_files(monkeypatch) -> None:
    monkeypatch.setattr(manifest_module, "_record_fields", lambda store, name: pytest.fail(f"read the file of {name}"))


def test_the_manifest_comes_from_the_index_and_equals_the_record_files(store, monkeypatch):
    walked = read_manifest(store, walk=True)
    assert len(walked) == 40 and walked.set_index("slide_id").loc["s07", "status"] == FAILED
    _no_record_files(monkeypatch)
    assert read_manifest(store).equals(walked)
    assert records_index(store).compact()  # merged or pending, the same table
    assert read_manifest(store).equals(walked)


def test_without_an_index_the_records_are_walked_with_a_warning_and_the_index_rebuilt(store, monkeypatch, caplog):
    walked = read_manifest(store, walk=True)
    shutil.rmtree(store.root / "index" / "records")  # a store made before the index, or a copy without it
    with caplog.at_level(logging.WARNING, logger="storage.store_index"):
        assert read_manifest(store).equals(walked)
    assert "has no index; reading their groups" in caplog.text
    _no_record_files(monkeypatch)
    assert read_manifest(store).equals(walked)


def test_a_record_the_index_lacks_is_read_from_its_file(store, caplog):
    # A worker killed between its record and the record's copy, or an older version of this project.
    write_zarr_group_atomic(store.status_dir / "late", SlideRecord("late", "/slides/late.svs", DONE, 3).to_dict())
    with caplog.at_level(logging.INFO, logger="storage.store_index"):
        manifest = read_manifest(store).set_index("slide_id")
    assert manifest.loc["late", "n_tiles"] == 3 and len(manifest) == 41
    assert "index lacks 1 of 41 records" in caplog.text


def test_cleared_rejected_rows_leave_the_index_too(store, caplog):
    write_record(store, SlideRecord(f"{REJECTED_PREFIX}3-abc", "/slides/missing.svs", FAILED, error="no such file"))
    assert len(read_manifest(store)) == 41
    clear_rejected_records(store)
    with caplog.at_level(logging.WARNING, logger="storage.store_index"):
        assert len(read_manifest(store)) == 40
    assert "not published" not in caplog.text
    assert records_index(store).compact() and f"{REJECTED_PREFIX}3-abc" not in records_index(store).read()


def _publish(store: TileStore, slide_id: str) -> None:
    """A published slide as the catch-up check sees it: a folder in ``slides/`` (its arrays do not matter here)."""
    write_zarr_group_atomic(store.slide_path(slide_id), {"slide_id": slide_id})


def test_a_copy_left_behind_by_a_killed_worker_is_detected_read_from_the_file_and_caught_up(store, monkeypatch, caplog):
    # s07 failed, then a rerun tiled it: published, its record written, and the worker killed before the copy.
    _publish(store, "s07")
    done = SlideRecord("s07", "/slides/s07.svs", DONE, n_tiles=12)
    write_zarr_group_atomic(store.status_dir / "s07", done.to_dict())
    assert records_index(store).read()["s07"]["status"] == FAILED  # the copy is one version behind
    with caplog.at_level(logging.WARNING, logger="storage.manifest"):
        manifest = read_manifest(store).set_index("slide_id")
    assert manifest.loc["s07", "status"] == DONE and manifest.loc["s07", "n_tiles"] == 12
    assert "copy was behind for 1 of 1 published slides" in caplog.text
    assert records_index(store).read()["s07"] == done.to_dict()  # caught up: the next reader reads the copy alone
    caplog.clear()
    walked = read_manifest(store, walk=True)
    _no_record_files(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="storage.manifest"):
        assert read_manifest(store).equals(walked)
    assert "behind" not in caplog.text


def test_an_up_to_date_copy_of_published_slides_reads_no_record_file(store, monkeypatch, caplog):
    for number in range(7):  # s07's copy says failed, as its file does: it would be read
        _publish(store, f"s{number:02d}")
    _no_record_files(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert len(read_manifest(store)) == 40
    assert "behind" not in caplog.text
