"""The run's QC page is made from the store's indexes: no record file nor slide group read when they are current."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import storage.manifest as manifest_module
from storage import tile_store as tile_store_module
from storage.atomic import write_zarr_group_atomic
from storage.manifest import DONE, FAILED, SlideRecord, records_index, write_record
from storage.slide_writer import SlideWriter
from storage.tile_store import TileStore
from tiling.qc_index import _row, _slides, write_qc_index

TILE_PX = 16


def tile(store: TileStore, slide_id: str, n_tiles: int, rejected: dict[str, int]) -> None:
    """Publish a slide of ``n_tiles`` tiles with ``rejected`` tiles per QC reason, and record it done."""
    writer = SlideWriter(
        store,
        slide_id,
        capacity=n_tiles,
        tile_size_px=TILE_PX,
        tiles_per_shard=4,
        jpeg_quality=90,
        jpeg_subsampling="444",
    )
    writer.append(np.zeros((n_tiles, TILE_PX, TILE_PX, 3), np.uint8))
    coords = np.zeros((n_tiles, 2), np.int64)
    writer.finish(coords, np.ones(n_tiles, np.float32), np.ones((2, 2), bool), 8.0, {"n_rejected": rejected})
    (store.qc_dir / f"{slide_id}.png").write_bytes(b"png")
    write_record(store, SlideRecord(slide_id, f"/slides/{slide_id}.svs", DONE, n_tiles=n_tiles, seconds=1.5))


@pytest.fixture
def store(tmp_path) -> TileStore:
    store = TileStore.create_or_open(tmp_path / "t.zarr", {"tile_size_px": TILE_PX})
    tile(store, "a", 5, {"blur": 2, "pen": 1})
    tile(store, "b", 3, {})
    write_record(store, SlideRecord("c", "/slides/c.svs", FAILED, error="unreadable"))
    return store


def _no_files_read(monkeypatch) -> None:
    monkeypatch.setattr(manifest_module, "_record_fields", lambda store, name: pytest.fail(f"read record {name}"))
    monkeypatch.setattr(tile_store_module, "slide_entry", lambda group: pytest.fail(f"read group {group}"))
    monkeypatch.setattr("tiling.qc_index._rejected_in_group", lambda store, s: pytest.fail(f"read group {s}"))


def _table(store: TileStore) -> dict[str, tuple]:
    records, rejected, pictures = _slides(store)
    rows = [_row(record, rejected, pictures) for record in records]
    return {row["slide_id"]: (row["status"], row["n_tiles"], row["n_rejected"], row["picture"]) for row in rows}


EXPECTED = {"a": (DONE, 5, 3, "a.png"), "b": (DONE, 3, 0, "b.png"), "c": (FAILED, 0, 0, None)}


def test_the_page_comes_from_the_indexes_alone(store, monkeypatch):
    _no_files_read(monkeypatch)
    assert _table(store) == EXPECTED
    page = write_qc_index(store).read_text()
    assert "3 slides, 8 tiles kept, 3 rejected by the tile QC, 1 slides failed" in page


def test_an_index_made_before_rejected_counts_is_read_once_and_completed(store, monkeypatch, caplog):
    older = {
        slide_id: {k: v for k, v in entry.items() if k != "n_rejected"}
        for slide_id, entry in store.slide_entries().items()
    }
    store.index.add_many(older)  # entries as a store tiled before this change holds them
    with caplog.at_level(logging.INFO, logger="tiling.qc_index"):
        assert _table(store) == EXPECTED
    assert "reading 2 slide groups" in caplog.text
    _no_files_read(monkeypatch)
    assert _table(store) == EXPECTED


def test_the_qc_page_of_a_rerun_catches_up_a_copy_left_behind(store, monkeypatch):
    # c failed; a rerun tiled it, and its worker was killed between the record and the record's copy.
    tile(store, "c", 2, {"blur": 1})
    write_zarr_group_atomic(store.status_dir / "c", SlideRecord("c", "/slides/c.svs", FAILED, error="x").to_dict())
    records_index(store).add("c", SlideRecord("c", "/slides/c.svs", FAILED, error="x").to_dict())
    write_zarr_group_atomic(store.status_dir / "c", SlideRecord("c", "/slides/c.svs", DONE, n_tiles=2).to_dict())
    write_qc_index(store)  # the end of the next run
    assert records_index(store).read()["c"]["status"] == DONE
    _no_files_read(monkeypatch)
    assert _table(store)["c"] == (DONE, 2, 1, "c.png")
