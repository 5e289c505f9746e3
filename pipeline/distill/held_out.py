"""Which tiles a run never trains on: every ``M``-th tile of its stores, kept aside to measure agreement.

Tiles are numbered ``g = 0, 1, …`` over the stores in the order the run is given them, each store's
tile units (shards) in their fixed order and the tiles of a unit in grid order. Tile ``g`` is held
out when ``g % M == M - 1``, with ``M = max(4, ⌈total / agreement_tiles⌉)``: at most
``agreement_tiles`` tiles and at most a quarter of a small store, spread evenly over every slide
and over each slide's grid. The split is arithmetic on the numbering, so the training stream skips
the held-out tiles without listing them (:class:`~pipeline.distill.data.TileStream`), and the same
for any number of processes, at every resume and with any seed.

A held-out tile's grid neighbours are trained on: the split measures how the student generalises
to unseen tiles of the training slides, not to unseen slides.
"""

from __future__ import annotations

import math

MIN_PERIOD = 4
"""At most one tile in four is held out, however few tiles the stores hold."""


def held_out_period(total_tiles: int, agreement_tiles: int) -> int:
    """``M``: every ``M``-th tile is held out (0, none, when no agreement is measured)."""
    if agreement_tiles <= 0 or total_tiles <= 0:
        return 0
    return max(MIN_PERIOD, math.ceil(total_tiles / agreement_tiles))


def held_out_before(g: int, every: int) -> int:
    """Held-out tiles among numbers ``[0, g)``."""
    return g // every if every else 0


def kept_number(k: int, every: int) -> int:
    """The number ``g`` of the ``k``-th (0-based) tile that is not held out."""
    return k + k // (every - 1) if every else k
