"""Publishing slides once, the stores' consolidated index, and embedding preparation against a live tiler."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import zarr

from storage import tile_store as tile_store_module
from storage.embedding_store import EmbeddingStore, open_embeddings
from storage.read import TileReader, open_tiles
from storage.slide_writer import SlideWriter
from storage.store_index import StoreIndex
from storage.tile_store import TileStore
from storage.tile_units import open_tile_source

TILE_PX = 32  # the store does not care about the tile size; small tiles keep the tests fast


def write_slide(
    store: TileStore, slide_id: str, n_tiles: int, *, shard: int = 2, created_at: str = "t0", tile_px: int = TILE_PX
) -> bool:
    """Publish a slide of ``n_tiles`` tiles through the real writer; each tile's pixels encode its slide and index."""
    writer = SlideWriter(
        store,
        slide_id,
        capacity=n_tiles,
        tile_size_px=tile_px,
        tiles_per_shard=shard,
        jpeg_quality=95,
        jpeg_subsampling="444",
    )
    value = sum(map(ord, slide_id)) % 200
    writer.append(
        np.stack([np.full((tile_px, tile_px, 3), value + i, np.uint8) for i in range(n_tiles)])
        if n_tiles
        else np.zeros((0, tile_px, tile_px, 3), np.uint8)
    )
    coords = np.stack([np.arange(n_tiles), np.zeros(n_tiles)], axis=1).astype(np.int64)
    return writer.finish(
        coords,
        np.ones(n_tiles, np.float32),
        np.ones((4, 4), bool),
        8.0,
        {"slide_id": slide_id, "created_at": created_at},
    )


def new_store(root: Path) -> TileStore:
    return TileStore.create_or_open(root, {"tile_size_px": TILE_PX})


def test_a_second_publish_of_a_slide_keeps_the_first_copy_and_its_stamp(tmp_path):
    store = new_store(tmp_path / "t.zarr")
    assert write_slide(store, "s1", 3, created_at="first")
    assert not write_slide(store, "s1", 3, created_at="second")  # a duplicate task, a retry racing its first try
    attributes = json.loads((store.slide_path("s1") / "zarr.json").read_text())["attributes"]
    assert attributes["created_at"] == "first"
    assert not [p for p in store.staging_dir.iterdir() if p.is_dir()]  # the losing copy is gone
    assert store.slide_entries() == {"s1": {"n_tiles": 3, "tiles_per_shard": 2, "created_at": "first", "n_rejected": 0}}


def test_a_reader_never_sees_a_published_slide_missing_while_duplicates_publish(tmp_path):
    store = new_store(tmp_path / "t.zarr")
    write_slide(store, "s1", 2)
    stop, outcomes = threading.Event(), []

    def republish() -> None:
        while not stop.is_set():
            outcomes.append(write_slide(store, "s1", 2, created_at="again"))

    thread = threading.Thread(target=republish)
    thread.start()
    seen = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline or not outcomes:
        seen.append((store.slide_path("s1") / "zarr.json").is_file())
    stop.set()
    thread.join()
    assert all(seen) and outcomes and not any(outcomes)


def test_readers_take_the_slides_from_the_index_without_opening_groups(tmp_path, monkeypatch):
    store = new_store(tmp_path / "t.zarr")
    for number, n_tiles in enumerate((3, 0, 5)):
        write_slide(store, f"s{number}", n_tiles)
    assert store.index.compact()  # fewer than COMPACT_AFTER were pending: merge them now

    def no_walking(group):
        raise AssertionError(f"walked {group}")

    monkeypatch.setattr(tile_store_module, "slide_entry", no_walking)
    units = open_tile_source(store.root).units()
    assert [(u.group, u.position, u.start, u.count) for u in units] == [
        ("s0", (0,), 0, 2),
        ("s0", (1,), 2, 1),
        ("s2", (0,), 0, 2),
        ("s2", (1,), 2, 2),
        ("s2", (2,), 4, 1),
    ]
    reader = TileReader(store)
    assert len(reader) == 8 and reader.locate(3) == ("s2", 0)
    dataset = open_tiles(store)
    assert dataset["tiles"].data.chunks[0] == (2, 1, 2, 2, 1)
    assert list(dataset["slide"].values) == ["s0", "s1", "s2"]
    s2 = zarr.open_group(store.slide_path("s2"), mode="r")
    np.testing.assert_array_equal(dataset["tiles"].values[3:], s2["tiles"][...])
    np.testing.assert_array_equal(dataset["coords"].values[3:], s2["coords"][...])
    np.testing.assert_array_equal(dataset["slide_index"].values, [0, 0, 0, 2, 2, 2, 2, 2])


def test_without_an_index_readers_walk_say_so_and_repair_it(tmp_path, caplog):
    store = new_store(tmp_path / "t.zarr")
    for number in range(3):
        write_slide(store, f"s{number}", 3)
    expected = store.slide_entries()
    shutil.rmtree(store.root / "index")  # a store made before indexes, or an index deleted by hand
    with caplog.at_level(logging.WARNING, logger="storage.store_index"):
        assert store.slide_entries() == expected
    assert "has no index; reading their groups" in caplog.text
    caplog.clear()
    assert StoreIndex(store.root / "index").exists()  # written back: the next reader reads one file
    with caplog.at_level(logging.INFO, logger="storage.store_index"):
        assert store.slide_entries() == expected
    assert caplog.text == ""


def test_a_stale_index_is_completed_from_the_groups(tmp_path, caplog):
    store = new_store(tmp_path / "t.zarr")
    write_slide(store, "a", 3)
    store.index.compact()
    # A slide renamed into slides/ by a worker killed before it wrote its index entry:
    write_slide(store, "b", 4)
    shutil.rmtree(store.index.pending_dir)
    # …and an entry for a slide deleted by hand:
    store.index.add("gone", {"n_tiles": 9, "tiles_per_shard": 2, "created_at": "t0"})
    with caplog.at_level(logging.INFO, logger="storage.store_index"):
        entries = store.slide_entries()
    assert list(entries) == ["a", "b"] and entries["b"]["n_tiles"] == 4
    assert "index lacks 1 of 2 slides" in caplog.text and "1 slides that are not published" in caplog.text


def _publish_many(root: str, prefix: str, count: int) -> None:
    store = TileStore(root)
    for number in range(count):
        write_slide(store, f"{prefix}-{number:03d}", 1 + number % 3)


@pytest.mark.slow
def test_two_processes_publishing_at_once_leave_every_slide_in_the_index(tmp_path):
    store = new_store(tmp_path / "t.zarr")
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        for future in [pool.submit(_publish_many, str(store.root), prefix, 70) for prefix in ("a", "b")]:
            future.result()
    known = store.index.read()
    assert len(known) == 140 and known == {
        s: tile_store_module.slide_entry(store.slide_path(s)) for s in store.complete_slide_ids()
    }
    assert len(list(store.index.pending_dir.iterdir())) < 2 * 32  # merged as they came, not left pending


def _embedding_store(root: Path) -> EmbeddingStore:
    return EmbeddingStore.create_or_open(root, {"model": "test", "dim": 4, "dtype": "float32"})


def test_re_preparing_a_slide_drops_its_markers_and_spares_a_slide_whose_id_extends_it(tmp_path):
    tiles = new_store(tmp_path / "t.zarr")
    write_slide(tiles, "a", 3)
    write_slide(tiles, "a.1", 3)
    source = open_tile_source(tiles.root)
    store = _embedding_store(tmp_path / "e.zarr")
    units = store.prepare(source, 4, "float32")
    assert [u.key for u in units] == ["a.0", "a.1", "a.1.0", "a.1.1"]
    for unit in units:
        store.write_unit(unit, np.ones((unit.count, 4)))
    shutil.rmtree(tiles.slide_path("a"))  # slide "a" tiled anew: another created_at
    write_slide(tiles, "a", 3, created_at="t1")
    store.prepare(source, 4, "float32")
    assert sorted(store.done_keys()) == ["a.1.0", "a.1.1"]
    assert list(open_embeddings(store.root).slide.values) == ["a.1"]


def test_open_embeddings_reads_only_the_index_and_the_done_listing(tmp_path, monkeypatch):
    from storage import embedding_store as embedding_store_module

    tiles = new_store(tmp_path / "t.zarr")
    for slide_id, n_tiles in (("x", 3), ("y", 0), ("z", 2)):
        write_slide(tiles, slide_id, n_tiles)
    store = _embedding_store(tmp_path / "e.zarr")
    units = store.prepare(open_tile_source(tiles.root), 4, "float32")
    values = {u.key: np.random.default_rng(i).random((u.count, 4)) for i, u in enumerate(units)}
    for unit in units[:-1]:  # z's only shard is not written: z is incomplete
        store.write_unit(unit, values[unit.key])
    monkeypatch.setattr(embedding_store_module, "_embedding_entry", lambda group: pytest.fail(f"walked {group}"))
    data = open_embeddings(store.root)
    assert list(data.slide.values) == ["x"]
    np.testing.assert_allclose(data.embeddings.values, np.concatenate([values["x.0"], values["x.1"]]), rtol=1e-6)
    np.testing.assert_array_equal(data["coords"].values[:, 0], [0, 1, 2])
    store.write_unit(units[-1], values["z.0"])
    assert list(open_embeddings(store.root).slide.values) == ["x", "z"]


@pytest.mark.slow
def test_ranks_embed_the_prepared_units_once_while_the_tiler_publishes(tmp_path, monkeypatch):
    """Two ranks, a preparation and a tiler publishing throughout: each unit once, late slides left for the rerun."""
    from collections import Counter

    from pipeline.embed import EmbeddingSettings, embed_partition, prepared_store

    tiles = new_store(tmp_path / "t.zarr")
    for number in range(4):
        write_slide(tiles, f"early-{number}", 3, tile_px=224)
    written: list[str] = []
    original = EmbeddingStore.write_unit

    def counting(self, unit, embeddings):
        written.append(unit.key)
        original(self, unit, embeddings)

    monkeypatch.setattr(EmbeddingStore, "write_unit", counting)
    settings = EmbeddingSettings(model="tiny-student", batch_size=4, loader_workers=0)
    out = tmp_path / "e.zarr"
    errors: list[BaseException] = []

    def guarded(function, *args):
        try:
            function(*args)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    def tiler() -> None:
        for number in range(6):
            write_slide(tiles, f"late-{number}", 3, tile_px=224)
            time.sleep(0.05)

    def run(rank: int) -> None:
        embed_partition(str(tiles.root), str(out), settings, rank, 2)

    publisher = threading.Thread(target=guarded, args=(tiler,))
    publisher.start()
    with prepared_store(out, settings, open_tile_source(tiles.root), threads=2):
        ranks = [threading.Thread(target=guarded, args=(run, rank)) for rank in (0, 1)]
        for thread in ranks:
            thread.start()
        for thread in (*ranks, publisher):
            thread.join()
    assert not errors, errors
    store = EmbeddingStore(out)
    prepared = [unit.key for unit in store.read_units()]
    assert Counter(written) == Counter(prepared)  # every prepared unit exactly once, nothing else
    assert {key.rpartition(".")[0] for key in prepared} >= {f"early-{n}" for n in range(4)}
    first = len(written)
    with prepared_store(out, settings, open_tile_source(tiles.root)):  # the rerun picks up the late slides
        for rank in (0, 1):
            embed_partition(str(tiles.root), str(out), settings, rank, 2)
    assert Counter(written[first:]) == Counter(set(store.done_keys()) - set(prepared))
    assert max(Counter(written).values()) == 1
    assert (
        list(open_embeddings(out).slide.values) == tiles.complete_slide_ids() and len(tiles.complete_slide_ids()) == 10
    )
