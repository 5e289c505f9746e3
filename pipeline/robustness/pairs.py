"""Slide pairs of a PLISM-style condition table and their robustness metrics, one row per pair.

A condition is one (staining, scanner) combination: one slide whose tiles are
registered onto the same tissue locations as every other condition's. Pairs
are grouped as the reference (plismbench ``get_results``) groups them: same
staining on two scanners ("inter-scanner"), same scanner with two stainings
("inter-staining"), both different ("inter-scanner, inter-staining"); "all"
is their union. 3 stainings × 7 scanners give 63, 21 and 126 pairs, 210 in all.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from pipeline.robustness.ranking import PreparedSlide, pair_metrics, prepare_slide

INTER_SCANNER = "inter-scanner"
INTER_STAINING = "inter-staining"
INTER_BOTH = "inter-scanner, inter-staining"
ALL_PAIRS = "all"
GROUPS = (INTER_SCANNER, INTER_STAINING, INTER_BOTH, ALL_PAIRS)

DEFAULT_KS = (1, 3, 5, 10)
DEFAULT_BLOCK = 2048


class Condition(NamedTuple):
    """One slide of the table: its name and the staining and scanner that made it."""

    name: str
    staining: str
    scanner: str


def pair_group(a: Condition, b: Condition) -> str:
    """The one group, of the three inter-groups, that a pair of distinct conditions belongs to."""
    if a.staining == b.staining and a.scanner == b.scanner:
        raise ValueError(f"conditions {a.name!r} and {b.name!r} share staining and scanner")
    if a.staining == b.staining:
        return INTER_SCANNER
    if a.scanner == b.scanner:
        return INTER_STAINING
    return INTER_BOTH


def default_device() -> torch.device:
    """CUDA when present: the cross blocks are GEMMs."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_features(x: Any, subset: np.ndarray | None, device: torch.device | str | None) -> torch.Tensor:
    """``[n, D]`` float32 tensor on ``device`` from an array or tensor, keeping only the ``subset`` rows."""
    if isinstance(x, torch.Tensor):
        tensor = x
    else:
        array = np.asarray(x)
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())  # torch wants writable memory
    if tensor.ndim != 2:
        raise ValueError(f"expected [n, D] features, got shape {tuple(tensor.shape)}")
    if subset is not None:
        tensor = tensor[torch.as_tensor(subset, dtype=torch.long, device=tensor.device)]
    return tensor.to(device=device or default_device(), dtype=torch.float32)


def check_subset(subset: Sequence[int] | np.ndarray | None) -> np.ndarray | None:
    """Tile indices as an int array; a repeated tile would compete with its own copy, so repeats are refused."""
    if subset is None:
        return None
    indices = np.asarray(subset, dtype=np.int64).ravel()
    if np.unique(indices).size != indices.size:
        raise ValueError("the tile subset repeats indices")
    return indices


def check_conditions(conditions: Sequence[Sequence[str]], n_conditions: int) -> list[Condition]:
    """The table as :class:`Condition` rows, one per slide of the embeddings, names unique."""
    table = [Condition(*row) for row in conditions]
    if len(table) != n_conditions:
        raise ValueError(f"{len(table)} conditions for {n_conditions} slides of embeddings")
    names = [c.name for c in table]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names repeat: {names}")
    return table


def robustness_table(
    embeddings: Any,
    conditions: Sequence[Sequence[str]],
    ks: Sequence[int] = DEFAULT_KS,
    subset: Sequence[int] | np.ndarray | None = None,
    device: torch.device | str | None = None,
    block: int = DEFAULT_BLOCK,
) -> pd.DataFrame:
    """Cosine similarity and top-k accuracies of every pair of conditions, one row per pair.

    Parameters
    ----------
    embeddings
        ``[C, n, D]`` array-like (NumPy, memmap, torch; anything whose ``[c]`` is ``[n, D]``):
        row i of every condition is the same tissue location.
    conditions
        ``C`` rows ``(name, staining, scanner)``, in the order of ``embeddings``.
    ks
        The k of the top-k accuracies.
    subset
        Tile indices to keep (e.g. plismbench's ``tiles_subset_8139.npy``); all tiles if None.
    device
        Where the GEMMs run; CUDA when present if None. All C slides are held there as
        unit-norm float32 rows (``C × n × D × 4`` bytes).
    block
        Side of the square similarity tiles: memory beyond the features is about
        ``5 × block²`` bytes (a float32 tile and its boolean comparison), whatever n.

    Returns
    -------
    One row per unordered pair (a before b in ``conditions``): ``condition_a``, ``staining_a``,
    ``scanner_a``, the same for b, ``group``, ``cosine_similarity`` and ``top_{k}_accuracy``.
    """
    table = check_conditions(conditions, len(embeddings))
    indices = check_subset(subset)
    k_max = max(ks)
    slides: list[PreparedSlide] = [
        prepare_slide(as_features(embeddings[c], indices, device), k_max, block) for c in range(len(table))
    ]
    rows = []
    for i, j in itertools.combinations(range(len(table)), 2):
        a, b = table[i], table[j]
        rows.append(
            {
                "condition_a": a.name,
                "staining_a": a.staining,
                "scanner_a": a.scanner,
                "condition_b": b.name,
                "staining_b": b.staining,
                "scanner_b": b.scanner,
                "group": pair_group(a, b),
                **pair_metrics(slides[i], slides[j], ks, block),
            }
        )
    return pd.DataFrame(rows)
