"""PyTorch datasets over tile and aligned stores: the tiles, ids and coordinates the stores hold, in workers too."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from distillpath.data import AlignedTileDataset, TileDataset, TileStream
from tests.flow_helpers import write_two_condition_store

CMU, OME = "CMU-1-Small-Region", "OS-1-detail"


def _slide(store, slide_id):
    return zarr.open_group(store / "slides" / slide_id, mode="r")


@pytest.fixture(scope="module")
def aligned(tmp_path_factory, shipped_tile_store):
    """Two conditions of 16 tiles: the CMU tiles and the same tiles mirrored."""
    tiles = _slide(shipped_tile_store, CMU)["tiles"][:16]
    coords = np.stack([np.full((16, 2), 10.4), np.full((16, 2), 20.6)])
    return write_two_condition_store(tmp_path_factory.mktemp("data") / "aligned.zarr", tiles, coords)


def test_items_are_the_stored_tile_its_slide_and_coordinates(shipped_tile_store):
    data = TileDataset(shipped_tile_store)
    cmu = _slide(shipped_tile_store, CMU)
    assert len(data) == 53
    tile, slide_id, coords = data[2]
    assert tile.shape == (3, 224, 224) and tile.dtype == torch.uint8
    np.testing.assert_array_equal(tile.permute(1, 2, 0).numpy(), cmu["tiles"][2])
    assert slide_id == CMU and coords.tolist() == cmu["coords"][2].tolist()
    tile, slide_id, coords = data[50]
    assert slide_id == OME and coords.tolist() == _slide(shipped_tile_store, OME)["coords"][0].tolist()


def test_labels_join_by_slide_and_choose_the_slides(shipped_tile_store):
    labels = pd.DataFrame({"slide_id": [OME, "elsewhere"], "grade": [3, 1]})
    data = TileDataset(shipped_tile_store, labels=labels, transform=lambda tile: tile.mean())
    assert len(data) == 3
    value, slide_id, _, label = data[1]
    assert slide_id == OME and label.item() == 3
    assert value == pytest.approx(_slide(shipped_tile_store, OME)["tiles"][1].mean())
    with pytest.raises(KeyError, match="no label for slide"):
        TileDataset(shipped_tile_store, labels=labels, slide_ids=[CMU])
    with pytest.raises(ValueError, match="one label per slide"):
        TileDataset(shipped_tile_store, labels=pd.DataFrame({"slide_id": [OME, OME], "grade": [1, 2]}))
    with pytest.raises(ValueError, match="slide_id column"):
        TileDataset(shipped_tile_store, labels=pd.DataFrame({"slide": [OME], "grade": [1]}))


def test_aligned_items_are_each_conditions_tiles(aligned):
    data = AlignedTileDataset(aligned, labels=pd.DataFrame({"slide_id": ["A", "B"], "scanner": ["S60", "AT2"]}))
    tiles = zarr.open_array(aligned / "tiles", mode="r")
    assert len(data) == 32
    tile, condition, coords, label = data[16 + 5]
    np.testing.assert_array_equal(tile.permute(1, 2, 0).numpy(), tiles[1, 5])
    assert condition == "B" and label == "AT2" and coords.tolist() == [21, 21]
    assert len(AlignedTileDataset(aligned, conditions=["A"])) == 16


@pytest.mark.slow
def test_two_loader_workers_give_every_tile_once(shipped_tile_store, aligned):
    """Forked workers (DataLoader's default on Linux) decode too: the JPEG thread pool is renewed after a fork."""
    data = TileDataset(shipped_tile_store)
    for batch_tiles, batch_ids, batch_coords in DataLoader(data, batch_size=20, num_workers=2, timeout=120):
        first = data[0]
        np.testing.assert_array_equal(batch_tiles[0].numpy(), first[0].numpy())
        assert batch_ids[0] == first[1] and batch_coords[0].tolist() == first[2].tolist()
        break
    stream = TileStream(shipped_tile_store, shuffle=True, seed=1)
    seen = Counter()
    for tiles, slide_ids, coords in DataLoader(stream, batch_size=8, num_workers=2, timeout=120):
        for tile, slide_id, (x, y) in zip(tiles, slide_ids, coords.tolist()):
            seen[(slide_id, x, y)] += 1
            row = np.flatnonzero((data.slide_ids == slide_id) & (data.coords == (x, y)).all(axis=1))[0]
            np.testing.assert_array_equal(tile.numpy(), data[row][0].numpy())
    assert sum(seen.values()) == 53 and set(seen.values()) == {1}
    aligned_items = list(DataLoader(AlignedTileDataset(aligned), batch_size=32, num_workers=2, timeout=120))
    assert aligned_items[0][0].shape == (32, 3, 224, 224) and list(aligned_items[0][1]) == ["A"] * 16 + ["B"] * 16
