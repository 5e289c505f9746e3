"""The training stream: an endless, seeded sequence of multi-crop batches, the same however it is split.

The global stream is a function of the seed alone (and of the stores, not of
the order they are given in: they are taken in
:class:`~pipeline.distill.held_out.HeldOutSplit`'s order). Every shard of every
store is cut into pieces of ``piece_tiles`` consecutive tiles (one contiguous
read each). Pass ``p`` visits every piece in a seeded random order, cut into
windows of ``window_tiles // piece_tiles`` consecutive pieces; within a window
the tiles come in a seeded random order. A window therefore mixes tiles of as
many slides as it has pieces (128 with the defaults), where whole-shard
windows would give every batch the tiles of a handful of slides. Passes
repeat forever, each with new orders. The ``held_out_tiles`` that
:mod:`pipeline.distill.held_out` keeps aside for the agreement never enter
the stream: a piece holds the other tiles of its range.

Where a tile sits is arithmetic on the store's index; nothing is read to
find it. A batch then reads exactly its own tiles' JPEG bytes (~27 kB a
224-px tile), one read per run of consecutive tiles of a shard, plus their
16-byte shard index entries (:meth:`~storage.tile_units.TileSource.read_tiles`).
Every loader worker of every rank therefore reads only what its steps use:
about 1.01× the bytes used, where reading whole windows and keeping a
share read 32× with 8 ranks × 8 workers and a window of 4 batches.

Global step ``s`` takes stream positions ``[s·G, (s+1)·G)`` and rank ``r`` of
``W`` the contiguous ``G/W`` of them at ``s·G + r·G/W``; sample ``q``'s crops
are drawn from a generator seeded by ``(seed, q)``. One process with batch
``G`` therefore sees exactly the samples and crops that ``W`` processes see
together, a resumed run sees what an uninterrupted one would have, and
``start_step`` skips ahead by arithmetic, without reading the skipped windows.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.distill.augment import MultiCrop
from pipeline.distill.config import DistillConfig
from pipeline.distill.held_out import HeldOutSplit, held_out_before, kept_number
from storage.jpeg_codec import decode_tile
from storage.tile_units import TileUnit

# Distinct streams of randomness derived from one seed.
_PIECE_ORDER, _TILE_ORDER, _CROPS = 0, 1, 2


def derive_seed(*parts: int) -> int:
    """A 63-bit seed depending on every part; the same in every process and Python run (unlike ``hash``)."""
    digest = hashlib.blake2b(np.asarray(parts, dtype="<i8").tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class TileRef:
    """Where a stream position's tile lives: tile ``tile`` of ``unit`` in store number ``store``."""

    store: int
    unit: TileUnit
    tile: int


@dataclass(frozen=True)
class _PassLayout:
    """One pass: pieces in visiting order, and the stream offset at which each window starts."""

    piece_order: np.ndarray  # int64 [piece]: indices into TileStream's pieces
    window_starts: np.ndarray  # int64 [window + 1]: first offset of each window within the pass, then the pass length


class TileStream(IterableDataset):
    """Per-step local batches for one rank: ``(step, batch)`` forever.

    ``batch`` holds ``global_crops`` uint8 ``[2, b, S, S, 3]``, ``local_crops``
    uint8 ``[n, b, s, s, 3]`` (``[0, b, s, s, 3]`` without local crops) and
    ``index`` int64 ``[b]``, the samples' global stream positions, with
    ``b = global_batch / world``. In a DataLoader, worker ``w`` of ``K``
    makes steps ``start_step + w + k·K``, so ``batch_size=None`` yields the
    steps in order (see :func:`make_loader`).

    Raises
    ------
    ValueError
        When ``global_batch`` is not a multiple of ``world``, ``rank`` is out
        of range, ``piece_tiles`` or ``window_tiles`` is not positive,
        ``held_out_tiles`` is negative, or the stores hold no tile to train
        on.
    """

    def __init__(
        self,
        stores: list[str | Path],
        *,
        seed: int,
        global_batch: int,
        rank: int,
        world: int,
        transform: MultiCrop,
        start_step: int = 0,
        piece_tiles: int = 64,
        window_tiles: int = 8192,
        held_out_tiles: int = 0,
        held_out_split: int = 0,
    ) -> None:
        if global_batch <= 0 or global_batch % world:
            raise ValueError(f"global_batch {global_batch} must be a positive multiple of world {world}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        if start_step < 0 or piece_tiles < 1 or window_tiles < 1 or held_out_tiles < 0:
            raise ValueError(
                f"start_step ({start_step}) must be >= 0, piece_tiles ({piece_tiles}) and "
                f"window_tiles ({window_tiles}) >= 1, held_out_tiles ({held_out_tiles}) >= 0"
            )
        split = HeldOutSplit.of(stores, held_out_tiles, held_out_split)
        self.sources = list(split.sources)  # in the split's order: the stream is the same whatever order stores has
        self._units = [(index, unit) for index, units in enumerate(split.units) for unit in units]
        unit_counts = np.array([unit.count for _, unit in self._units], dtype=np.int64)
        # Tile t of unit u has number _unit_number[u] + t, held out when its remainder mod the period is
        # period - 1 (pipeline.distill.held_out).
        self._unit_number = np.array([split.shift(index, unit) for index, unit in self._units], dtype=np.int64)
        # Piece i: up to piece_tiles tiles from _piece_start[i] of unit _piece_unit[i], of which
        # _counts[i] are not held out.
        piece_unit = np.repeat(np.arange(len(self._units)), -(-unit_counts // piece_tiles))
        piece_start = np.concatenate(
            [np.arange(0, count, piece_tiles) for count in unit_counts.tolist()] or [np.zeros(0, dtype=np.int64)]
        )
        first = self._unit_number[piece_unit] + piece_start
        end = first + np.minimum(piece_tiles, unit_counts[piece_unit] - piece_start)
        counts = end - first
        period = split.every
        if period:
            counts -= end // period - first // period
        kept = counts > 0  # a piece may be all held out (piece_tiles 1)
        self._piece_unit, self._piece_start, self._counts = piece_unit[kept], piece_start[kept], counts[kept]
        self.held_out_period = period
        self.tiles_per_pass = int(self._counts.sum())
        if not self.tiles_per_pass:
            raise ValueError(f"no complete tiles in {[str(source.root) for source in self.sources]}")
        self.seed, self.global_batch, self.rank, self.world = seed, global_batch, rank, world
        self.transform, self.start_step = transform, start_step
        self.window_pieces = max(1, window_tiles // piece_tiles)
        self._layout: tuple[int, _PassLayout] | None = None
        self._window_cache: tuple[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    @classmethod
    def for_run(
        cls, config: DistillConfig, stores: list[str | Path], rank: int = 0, world: int = 1, start_step: int = 0
    ) -> TileStream:
        """The stream a distillation run with ``config`` trains on, as rank ``rank`` of ``world`` sees it."""
        return cls(
            stores,
            seed=config.train.seed,
            global_batch=config.train.batch_size_total,
            rank=rank,
            world=world,
            transform=MultiCrop(config.crops),
            start_step=start_step,
            piece_tiles=config.train.piece_tiles,
            window_tiles=config.train.window_tiles,
            held_out_tiles=config.train.agreement_tiles,
            held_out_split=config.train.agreement_split,
        )

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world

    def positions(self, step: int) -> range:
        """Stream positions of this rank at ``step``."""
        start = step * self.global_batch + self.rank * self.local_batch
        return range(start, start + self.local_batch)

    def _pass_layout(self, pass_index: int) -> _PassLayout:
        if self._layout is None or self._layout[0] != pass_index:
            order = np.random.default_rng(derive_seed(self.seed, _PIECE_ORDER, pass_index)).permutation(
                len(self._counts)
            )
            sizes = np.add.reduceat(self._counts[order], np.arange(0, len(order), self.window_pieces))
            self._layout = (pass_index, _PassLayout(order, np.concatenate([[0], np.cumsum(sizes)])))
        return self._layout[1]

    def _window(self, pass_index: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The window's pieces (in concatenation order), the order the stream visits its concatenated tiles, and
        where each piece starts in the concatenation; kept for the last window (a step rarely spans two).
        """
        if self._window_cache is None or self._window_cache[0] != (pass_index, window):
            pieces = self._pass_layout(pass_index).piece_order[
                window * self.window_pieces : (window + 1) * self.window_pieces
            ]
            counts = self._counts[pieces]
            order = np.random.default_rng(derive_seed(self.seed, _TILE_ORDER, pass_index, window)).permutation(
                int(counts.sum())
            )
            self._window_cache = ((pass_index, window), (pieces, order, np.cumsum(counts) - counts))
        return self._window_cache[1]

    def _locate(self, position: int) -> tuple[int, int, int]:
        """``(pass, window, offset in window)`` of a stream position."""
        pass_index, offset = divmod(position, self.tiles_per_pass)
        starts = self._pass_layout(pass_index).window_starts
        window = int(np.searchsorted(starts, offset, side="right")) - 1
        return pass_index, window, offset - int(starts[window])

    def tile_at(self, position: int) -> TileRef:
        """The tile at a stream position, found without reading anything."""
        pass_index, window, offset = self._locate(position)
        pieces, order, piece_starts = self._window(pass_index, window)
        tile = int(order[offset])
        local = int(np.searchsorted(piece_starts, tile, side="right")) - 1
        piece = pieces[local]
        unit_index = int(self._piece_unit[piece])
        store, unit = self._units[unit_index]
        first = int(self._unit_number[unit_index]) + int(self._piece_start[piece])  # the piece's first number
        every = self.held_out_period
        number = kept_number(first - held_out_before(first, every) + tile - int(piece_starts[local]), every)
        return TileRef(store, unit, number - int(self._unit_number[unit_index]))

    def _encoded(self, refs: list[TileRef]) -> list[bytes]:
        """The JPEG bytes of ``refs``, in order: one read of only the tiles needed per unit."""
        wanted: dict[tuple[int, TileUnit], list[int]] = {}
        for ref in refs:
            wanted.setdefault((ref.store, ref.unit), []).append(ref.tile)
        found = {}
        for (store, unit), tiles in wanted.items():
            for tile, data in zip(tiles, self.sources[store].read_tiles(unit, tiles)):
                found[store, unit, tile] = data
        return [found[ref.store, ref.unit, ref.tile] for ref in refs]

    def _crops(self, position: int, encoded: bytes) -> dict[str, list[torch.Tensor]]:
        tile = torch.from_numpy(decode_tile(encoded))
        return self.transform(tile, torch.Generator().manual_seed(derive_seed(self.seed, _CROPS, position)))

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """Batch of this rank at global step ``step``."""
        positions = self.positions(step)
        encoded = self._encoded([self.tile_at(position) for position in positions])
        samples = [self._crops(position, data) for position, data in zip(positions, encoded)]
        if self.transform.config.local_crops_number:
            local_crops = torch.stack([torch.stack(s["local_crops"]) for s in samples], dim=1)
        else:
            size = self.transform.config.local_crop_size
            local_crops = torch.empty((0, len(samples), size, size, 3), dtype=torch.uint8)
        return {
            "global_crops": torch.stack([torch.stack(s["global_crops"]) for s in samples], dim=1),
            "local_crops": local_crops,
            "index": torch.tensor(positions, dtype=torch.int64),
        }

    def __iter__(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for step in itertools.count(self.start_step + worker, workers):
            yield step, self.batch(step)


def make_loader(stream: TileStream, num_workers: int, *, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``stream`` that yields its ``(step, batch)`` items in step order.

    Workers start from a clean "forkserver" process: a plain fork would copy
    this process's thread pools (the JPEG codec's, zarr's event loop) without
    their threads, and hang on first use. They persist, so a new epoch of the
    loop does not pay their start-up again.
    """
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        multiprocessing_context="forkserver" if num_workers else None,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers else None,
    )
