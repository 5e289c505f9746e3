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
