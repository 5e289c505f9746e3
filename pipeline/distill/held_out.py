"""Which tiles a run never trains on: every ``M``-th tile of each slide, kept aside to measure agreement.

``M = max(4, ⌈total / agreement_tiles⌉)`` over all the run's tiles: at most about ``agreement_tiles``
tiles and at most a quarter of a small store, spread evenly over every slide and over each slide's grid.
Within a tile array (a slide of a tile store; the whole reference grid of an aligned tile store, so
that every condition of a held-out grid position is held out) tile ``i`` (its index along the array's
tile axis) is held out when ``(i + offset) % M == M - 1``. The offset is
``(h + split) % M`` with ``h`` a hash of the store's identity and the array's name: it does not depend
on where the store lies or on the order in which the run is given its stores, and the ``M`` values of
``split`` (``train.agreement_split``) give ``M`` disjoint held-out sets. The split is arithmetic, so
the training stream skips the held-out tiles without listing them
(:class:`~pipeline.distill.data.TileStream`), the same in any number of processes and at every resume.

A store's identity is a hash of how it was made (layout, tiling parameters, an aligned store's plan),
read from its root attributes: the same after the store is moved or copied, and for the same slides
tiled again with the same parameters (the same tiles), so that a test's or a benchmark's split does
not change from one session to the next. Stores made alike hold other slides, whose ids tell them
apart. A run directory records its stores' identities and held-out set (``held_out.json``); a resume
whose stores differ or give another set (a store that grew, or was tiled otherwise) is refused. The
order of the stores does not matter.

A held-out tile's grid neighbours are trained on: the split measures how the student generalises
to unseen tiles of the training slides, not to unseen slides.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zarr

from storage.tile_units import TileSource, TileUnit, open_tile_source

MIN_PERIOD = 4
"""At most one tile in four is held out, however few tiles the stores hold."""


class HeldOutMismatch(ValueError):
    """A resume whose stores hold out other tiles than the run was started with."""


def held_out_period(total_tiles: int, agreement_tiles: int) -> int:
    """``M``: every ``M``-th tile is held out (0, none, when no agreement is measured)."""
    if agreement_tiles <= 0 or total_tiles <= 0:
        return 0
    return max(MIN_PERIOD, math.ceil(total_tiles / agreement_tiles))


def held_out_before(g: int, every: int) -> int:
    """Held-out numbers among ``[0, g)`` (a number ``g`` is held out when ``g % every == every - 1``)."""
    return g // every if every else 0


def kept_number(k: int, every: int) -> int:
    """The ``k``-th (0-based) number that is not held out."""
    return k + k // (every - 1) if every else k


def store_identity(source: TileSource) -> str:
    """A hash of how the store was made (layout, tiling parameters, an aligned store's plan but its random id),
    independent of its path and of when it was made; 16 hex digits.
    """
    attributes = dict(zarr.open_group(source.root, mode="r").attrs)
    plan = {key: value for key, value in (attributes.get("plan") or {}).items() if key != "plan_id"}
    made_by = {
        "layout": attributes.get("layout"),
        "parameters": attributes.get("tiling", attributes.get("parameters")),  # tile store, aligned store
        "plan": plan,
    }
    return hashlib.blake2b(json.dumps(made_by, sort_keys=True).encode(), digest_size=8).hexdigest()


def array_name(unit: TileUnit) -> str:
    """The tile array a unit belongs to: its slide id, or ``""`` for an aligned store's grid (all conditions)."""
    return unit.group


def _hash_offset(identity: str, array: str) -> int:
    digest = hashlib.blake2b(f"{identity}/{array}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class HeldOutSplit:
    """The held-out tiles of a run's stores: ``every`` (``M``, 0 for none) and each store's identity.

    ``sources`` are in a canonical order (:meth:`of`), so that the stream and the agreement see the stores
    in the same order whatever order the command line gave.
    """

    sources: tuple[TileSource, ...]
    units: tuple[tuple[TileUnit, ...], ...]  # each source's units, in their fixed order
    identities: tuple[str, ...]
    every: int
    split: int

    @classmethod
    def of(cls, stores: Sequence[str | Path], agreement_tiles: int, split: int = 0) -> HeldOutSplit:
        """The split of ``stores`` (tile stores or aligned tile stores), ordered by identity then by slides."""
        sources = [open_tile_source(store) for store in stores]
        keyed = sorted(
            ((store_identity(source), tuple(source.units()), source) for source in sources),
            key=lambda entry: (entry[0], [unit.key for unit in entry[1]], str(entry[2].root)),
        )
        total = sum(unit.count for _, units, _ in keyed for unit in units)
        return cls(
            tuple(source for _, _, source in keyed),
            tuple(units for _, units, _ in keyed),
            tuple(identity for identity, _, _ in keyed),
            held_out_period(total, agreement_tiles),
            split,
        )

    def shift(self, store: int, unit: TileUnit) -> int:
        """``s``: tile ``t`` of ``unit`` in store number ``store`` has number ``s + t``, held out when
        ``(s + t) % every == every - 1``.
        """
        if not self.every:
            return unit.start
        offset = (_hash_offset(self.identities[store], array_name(unit)) + self.split) % self.every
        return unit.start + offset

    def held_out_in(self, store: int, unit: TileUnit) -> list[int]:
        """Indices within ``unit`` of its held-out tiles, ascending."""
        if not self.every:
            return []
        shift = self.shift(store, unit)
        return list(range((self.every - 1 - shift) % self.every, unit.count, self.every))

    def record(self) -> dict:
        """What ``RUN/held_out.json`` holds: ``M``, the split and each store's held-out tiles by array,
        as indices along the array's tile axis (with the condition for an aligned store).
        """
        stores = []
        for store, source in enumerate(self.sources):
            arrays: dict[str, list[int]] = {}
            for unit in self.units[store]:
                name = ".".join([array_name(unit), *map(str, unit.position[:-1])]).strip(".")
                arrays.setdefault(name, []).extend(unit.start + t for t in self.held_out_in(store, unit))
            stores.append({"identity": self.identities[store], "path": str(source.root), "held_out": arrays})
        return {"every": self.every, "split": self.split, "stores": stores}


def _tile_set(record: dict) -> list[tuple[str, str, int]]:
    return sorted(
        (store["identity"], array, index)
        for store in record["stores"]
        for array, indices in store["held_out"].items()
        for index in indices
    )


def check_same_held_out(recorded: dict, now: dict, run: Path) -> None:
    """Raise :class:`HeldOutMismatch` (one line) when ``now`` holds out other tiles than ``recorded``, or
    names other stores (with nothing held out, other stores would still change what the run trains on).

    Stores are compared by identity, not path: a run resumed with its stores moved, or given in
    another order, holds out the same tiles.
    """
    before, after = _tile_set(recorded), _tile_set(now)
    stores_before, stores_after = (sorted(store["identity"] for store in r["stores"]) for r in (recorded, now))
    if before != after or stores_before != stores_after:
        differ = len(set(before) ^ set(after))
        raise HeldOutMismatch(
            f"{run} was started with other stores or other tiles held out ({len(stores_before)} stores and "
            f"{len(before)} held-out tiles then, {len(stores_after)} and {len(after)} with these --tiles, "
            f"{differ} tiles not in both): resume with the stores it was started with, or use another --out"
        )
