"""PyTorch datasets over tile stores and aligned tile stores, for training on tiles.

Every item is ``(tile, slide_id, coords)``, or ``(tile, slide_id, coords,
label)`` when labels are given: ``tile`` is what ``transform`` makes of the
``[H, W, 3]`` uint8 tile (by default a ``[3, H, W]`` uint8 tensor),
``slide_id`` the slide's id (an aligned store's condition name), ``coords``
the level-0 ``(x, y)`` of the tile's top-left corner as an int64 tensor.
Labels are a table with a ``slide_id`` column, joined by slide id.

Tiles are decoded by :mod:`storage` (the store's ``jpeg`` codec through
zarr). Datasets pickle as paths and open their files on first use in each
process, so ``DataLoader(num_workers=N)`` works with any start method.
:class:`TileDataset` (map-style) suits shuffled training;
:class:`TileStream` (iterable) reads shard after shard, a shard decoded in one
call, each worker taking every N-th shard: the fast way to pass over a store.

Example::

    from torch.utils.data import DataLoader
    from distillpath.data import TileDataset

    data = TileDataset("out/tiles.zarr", labels="labels.csv", label_column="subtype")
    for tiles, slide_ids, coords, labels in DataLoader(data, batch_size=64, shuffle=True, num_workers=4):
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from storage.aligned_store import open_aligned_store
from storage.read import TileReader

Transform = Callable[[np.ndarray], object]


def to_tensor(tile: np.ndarray) -> torch.Tensor:
    """The default transform: ``[H, W, 3]`` uint8 to a ``[3, H, W]`` uint8 tensor (what torchvision expects)."""
    return torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1)


def _identity(tile: np.ndarray) -> np.ndarray:
    return tile


def _label_table(labels: pd.DataFrame | Path | str | None, label_column: str | None) -> pd.Series | None:
    """Labels by slide id, one per slide; ``None`` without labels."""
    if labels is None:
        return None
    table = labels if isinstance(labels, pd.DataFrame) else pd.read_csv(labels, dtype={"slide_id": str})
    if "slide_id" not in table.columns:
        raise ValueError(f"labels need a slide_id column; columns: {list(table.columns)}")
    column = label_column or next((c for c in table.columns if c != "slide_id"), None)
    if column not in table.columns:
        raise ValueError(f"label column {column!r} not in the labels; columns: {list(table.columns)}")
    repeated = table["slide_id"][table["slide_id"].duplicated()]
    if len(repeated):
        raise ValueError(f"labels repeat slide_id {sorted(set(repeated))[:5]}: one label per slide")
    return table.set_index(table["slide_id"].astype(str))[column]


def _label_value(value: object) -> object:
    return torch.as_tensor(value) if isinstance(value, (int, float, np.number, bool, np.bool_)) else value


class _Labelled:
    """What the datasets share: the labels, the slides chosen by them, the transform, the item tuple."""

    def _set_up(
        self,
        store: Path | str,
        labels: pd.DataFrame | Path | str | None,
        label_column: str | None,
        transform: Transform | None,
    ) -> None:
        self.path = Path(store)
        self.labels = _label_table(labels, label_column)
        self.transform = transform or _identity

    def _choose_slides(self, available: list[str], slide_ids: list[str] | None) -> list[str]:
        chosen = available if slide_ids is None else list(slide_ids)
        missing = sorted(set(chosen) - set(available))
        if missing:
            raise KeyError(f"{self.path} has no complete slide {', '.join(missing[:5])}")
        if self.labels is not None:
            unlabelled = [s for s in chosen if s not in self.labels.index]
            if slide_ids is not None and unlabelled:
                raise KeyError(f"no label for slide(s) {', '.join(unlabelled[:5])}")
            chosen = [s for s in chosen if s in self.labels.index]
            if not chosen:
                raise ValueError(f"none of the labelled slides is in {self.path}")
        return chosen

    def _item(self, tile: np.ndarray, slide_id: str, coords: np.ndarray) -> tuple:
        item = (self.transform(tile), slide_id, torch.as_tensor(np.asarray(coords, dtype=np.int64)))
        return item if self.labels is None else (*item, _label_value(self.labels[slide_id]))


class TileDataset(_Labelled, Dataset):
    """Map-style dataset over every tile of a tile store (or of ``slide_ids``).

    With ``labels`` (a DataFrame or CSV with ``slide_id`` and ``label_column``,
    by default its first other column) only labelled slides are used, and
    each item carries its slide's label.
    """

    def __init__(
        self,
        store: Path | str,
        *,
        slide_ids: list[str] | None = None,
        labels: pd.DataFrame | Path | str | None = None,
        label_column: str | None = None,
        transform: Transform | None = to_tensor,
    ) -> None:
        self._set_up(store, labels, label_column, transform)
        available = TileReader(store).slide_ids
        self.reader = TileReader(store, self._choose_slides(available, slide_ids))
        self.slide_ids = self.reader.tile_slide_ids()
        self.coords = self.reader.tile_coords()

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> tuple:
        return self._item(self.reader[int(index)], str(self.slide_ids[index]), self.coords[index])


class TileStream(_Labelled, IterableDataset):
    """Iterable dataset reading a tile store shard after shard; workers share the shards out.

    ``shuffle`` permutes the shards and the tiles within each shard with
    ``seed`` + :meth:`set_epoch`'s epoch (call it before each epoch), the same
    in every worker, so the workers' shares still cover every tile once.
    """

    def __init__(
        self,
        store: Path | str,
        *,
        slide_ids: list[str] | None = None,
        labels: pd.DataFrame | Path | str | None = None,
        label_column: str | None = None,
        transform: Transform | None = to_tensor,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self._set_up(store, labels, label_column, transform)
        reader = TileReader(store)
        self.reader = TileReader(store, self._choose_slides(reader.slide_ids, slide_ids))
        entries = self.reader.store.slide_entries()
        self.shards = [
            (int(start + offset), int(min(start + offset + entries[s]["tiles_per_shard"], stop)))
            for s, start, stop in zip(self.reader.slide_ids, self.reader.offsets[:-1], self.reader.offsets[1:])
            for offset in range(0, int(stop - start), entries[s]["tiles_per_shard"])
        ]
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.reader)

    def __iter__(self):
        worker = get_worker_info()
        rank, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        order = np.arange(len(self.shards))
        random = np.random.default_rng((self.seed, self.epoch))
        if self.shuffle:
            order = random.permutation(order)
        for position in order[rank::workers]:
            start, stop = self.shards[position]
            rows = np.arange(start, stop)
            if self.shuffle:
                rows = np.random.default_rng((self.seed, self.epoch, int(position))).permutation(rows)
            tiles = self.reader[start:stop]  # one shard, decoded in one call
            slide_ids, coords = self.reader.tile_slide_ids(rows), self.reader.tile_coords(rows)
            for row, slide_id, xy in zip(rows, slide_ids, coords):
                yield self._item(tiles[row - start], str(slide_id), xy)


class AlignedTileDataset(_Labelled, Dataset):
    """Map-style dataset over an aligned tile store: every tile of every extracted condition.

    Items are numbered condition after condition; ``slide_id`` is the
    condition's name, ``coords`` its level-0 ``(x, y)`` in that condition's
    slide. Labels join by condition name.
    """

    def __init__(
        self,
        store: Path | str,
        *,
        conditions: list[str] | None = None,
        labels: pd.DataFrame | Path | str | None = None,
        label_column: str | None = None,
        transform: Transform | None = to_tensor,
    ) -> None:
        self._set_up(store, labels, label_column, transform)
        aligned = open_aligned_store(store)
        plan = aligned.read_plan()
        if plan is None:
            raise ValueError(f"{aligned.root} has no tiles yet: its registration or planning has not finished")
        names = [row["name"] for row in plan["table"]]
        extracted = [name for name in names if aligned.is_extracted(name)]
        self.conditions = self._choose_slides(extracted, conditions)
        self.rows = [names.index(name) for name in self.conditions]
        group = zarr.open_group(aligned.root, mode="r")
        self.n_tiles = int(group["grid"].shape[0])
        self.coords = np.round(group["coords"].oindex[self.rows]).astype(np.int64)  # [condition, tile, xy]
        self.root = aligned.root
        self._tiles: zarr.Array | None = None

    def __len__(self) -> int:
        return len(self.conditions) * self.n_tiles

    def __getitem__(self, index: int) -> tuple:
        if not 0 <= index < len(self):
            raise IndexError(f"tile {index} out of range for {len(self)} tiles")
        condition, tile = divmod(int(index), self.n_tiles)
        if self._tiles is None:
            self._tiles = zarr.open_array(self.root / "tiles", mode="r")
        image = self._tiles[self.rows[condition], tile]
        return self._item(image, self.conditions[condition], self.coords[condition, tile])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tiles": None}
