"""What may be compared: embedding stores with unique labels, over one aligned tile set, and a valid subset.

A robustness report ranks models, so each store needs a name that cannot
hide another: two ``h0-mini`` checkpoints are two models. The default label
is the model name with the first 8 hex digits of its weights' SHA-256
(``h0-mini-3f1c9a2b``), or ``-random-seed<N>`` for a randomly initialised
model; the user may give labels instead. Stores can only be compared tile
for tile when they embed the same aligned tile store plan (same plan id, same
tile count). Plain functions on the stores' recorded attributes: no files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The pooling the published PLISM benchmark (owkin/plism-benchmark) uses for H0-mini: class token only.
LEADERBOARD_POOLING = "cls"


class StoreMismatchError(ValueError):
    """The stores given cannot be compared as asked; the message names them."""


@dataclass(frozen=True)
class StoreIdentity:
    """What a robustness report must know of one embedding store to label and compare it."""

    path: str
    model: str
    weights_sha256: str | None
    init_seed: int | None
    pooling: str
    dim: int
    plan_id: str | None  # the aligned tile store plan the embeddings were computed from
    n_tiles: int

    def default_label(self) -> str:
        if self.weights_sha256:
            return f"{self.model}-{self.weights_sha256[:8]}"
        return f"{self.model}-random" + (f"-seed{self.init_seed}" if self.init_seed is not None else "")


def file_name(label: str) -> str:
    """``label`` as a file name (letters, digits, ``-_.``; anything else becomes ``-``)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label)


def assign_labels(stores: Sequence[StoreIdentity], given: Sequence[str] | None = None) -> dict[str, StoreIdentity]:
    """``{label: store}`` in the order given; labels unique, also as file names.

    Without ``given``, each store gets :meth:`StoreIdentity.default_label`,
    with its pooling appended when the stores were pooled differently (the
    same weights pooled two ways are two embeddings).

    Raises
    ------
    StoreMismatchError
        If ``given`` does not have one label per store, or two stores end up
        with the same label (the same store twice, or the same model and
        weights pooled the same way): the message says to pass ``--label``.
    """
    if given is not None and len(given) != len(stores):
        raise StoreMismatchError(f"{len(given)} labels for {len(stores)} embedding stores; give one --label per store")
    if given is not None:
        labels = list(given)
    else:
        labels = [store.default_label() for store in stores]
        if len({store.pooling for store in stores}) > 1:
            labels = [f"{label} [{store.pooling}]" for label, store in zip(labels, stores)]
    seen: dict[str, StoreIdentity] = {}
    for label, store in zip(labels, stores):
        clash = next((other for name, other in seen.items() if file_name(name) == file_name(label)), None)
        if clash is not None:
            raise StoreMismatchError(
                f"{clash.path} and {store.path} would both be reported as {label!r} (same model, weights and "
                "pooling, or the same store twice); give each store its own name with --label"
            )
        seen[label] = store
    return seen


def check_same_tiles(stores: dict[str, StoreIdentity]) -> None:
    """Raise :class:`StoreMismatchError` unless every store embeds the same aligned tiles (plan id, tile count)."""
    tile_sets = {(store.plan_id, store.n_tiles) for store in stores.values()}
    if len(tile_sets) > 1:
        listed = "; ".join(f"{label}: plan {s.plan_id}, {s.n_tiles} tiles ({s.path})" for label, s in stores.items())
        raise StoreMismatchError(
            "the embedding stores come from different aligned tile sets, so their tiles do not match one to one: "
            + listed
            + ". Embed the same aligned tile store with every model"
        )


def pooling_warning(stores: dict[str, StoreIdentity]) -> str | None:
    """A sentence for the log and the report when the stores were pooled differently, else None."""
    poolings = {store.pooling for store in stores.values()}
    if len(poolings) < 2:
        return None
    listed = ", ".join(f"{label}: {store.pooling}" for label, store in stores.items())
    return (
        f"the stores were pooled differently ({listed}); their scores differ by pooling as well as by model. "
        f"The PLISM leaderboard pools with the class token only (--pooling {LEADERBOARD_POOLING})"
    )


def validated_subset(indices: np.ndarray, n_tiles: int, source: str) -> np.ndarray:
    """The tile subset as int64 indices, or :class:`StoreMismatchError` naming ``source`` if it does not fit."""
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise StoreMismatchError(
            f"{source}: a tile subset is a 1-D array of integer tile indices, got {indices.dtype} {indices.shape}"
        )
    if indices.size == 0:
        raise StoreMismatchError(f"{source}: the tile subset is empty")
    if indices.min() < 0 or indices.max() >= n_tiles:
        raise StoreMismatchError(
            f"{source}: tile indices must lie in 0..{n_tiles - 1} (the stores hold {n_tiles} "
            f"tiles), found {indices.min()}..{indices.max()}"
        )
    if len(np.unique(indices)) != indices.size:
        raise StoreMismatchError(f"{source}: the tile subset lists some tiles twice")
    return indices.astype(np.int64)
