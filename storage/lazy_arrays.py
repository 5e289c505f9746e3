"""One lazy array over the rows of many zarr arrays, built from sizes known in advance.

``da.concatenate([da.from_zarr(zarr.open_array(p)) for p in paths])`` opens
every array's metadata up front and builds one graph layer per array: for
6,093 slides, ~12,000 metadata reads and a second of graph work per variable.
A store index already knows each array's length and block size, so the graph
is written directly, one task per block, and an array is opened only when a
block of it is computed (once per process).

Dask is a pipeline dependency, not a reading one: where it is not installed
the same rows come as xarray's own lazily indexed arrays (:class:`ZarrRows`),
which read only the rows an index selects, so ``open_tiles`` and
``open_embeddings`` work with numpy, zarr, imagecodecs and xarray alone.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache

import numpy as np
import zarr
from xarray.backends import BackendArray
from xarray.core import indexing

HAVE_DASK = importlib.util.find_spec("dask") is not None


@lru_cache(maxsize=1024)
def _open_path(path: str) -> zarr.Array:
    return zarr.open_array(path, mode="r")


def _open(path_or_array) -> zarr.Array:
    return path_or_array if isinstance(path_or_array, zarr.Array) else _open_path(path_or_array)


def _read_rows(path: str, start: int, stop: int) -> np.ndarray:
    return _open(path)[start:stop]


def _token(name: str, *parts: object) -> str:
    """A name for the graph that changes with its contents (dask's ``tokenize`` costs 0.1 s for 6,000 parts)."""
    return f"{name}-{hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()}"


class ZarrRows(BackendArray):
    """The rows of several zarr arrays, one after another, read on indexing (an xarray ``BackendArray``).

    Only basic indexing (integers and slices) reaches :meth:`_read`; xarray
    applies any other index to what that returns.
    """

    def __init__(self, parts: list[tuple[str, int]], trailing: tuple[int, ...], dtype) -> None:
        self.parts = [(path, n) for path, n in parts if n]
        self.offsets = np.concatenate([[0], np.cumsum([n for _, n in self.parts], dtype=np.int64)])
        self.shape = (int(self.offsets[-1]), *trailing)
        self.dtype = np.dtype(dtype)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        rows, rest = key[0], tuple(key[1:])
        if isinstance(rows, (int, np.integer)):
            index = int(rows) % self.shape[0]
            part = int(np.searchsorted(self.offsets, index, side="right")) - 1
            return _open(self.parts[part][0])[(index - int(self.offsets[part]), *rest)]
        start, stop, step = rows.indices(self.shape[0])
        wanted = np.arange(start, stop, step)
        pieces = []
        for part, (path, _) in enumerate(self.parts):
            low, high = int(self.offsets[part]), int(self.offsets[part + 1])
            mine = wanted[(wanted >= low) & (wanted < high)] - low
            if len(mine):
                first, last = int(mine.min()), int(mine.max())
                block = _open(path)[(slice(first, last + 1), *rest)]
                pieces.append(block[mine - first] if step != 1 or len(mine) != last - first + 1 else block)
        if not pieces:
            empty = np.zeros(self.shape, self.dtype)[(slice(0, 0), *rest)]
            return empty
        return np.concatenate(pieces) if step > 0 else np.concatenate(pieces)[::-1]


def lazily(array):
    """``array`` (a :class:`ZarrRows` or a zarr array) as data xarray indexes without reading it all."""
    if isinstance(array, zarr.Array):
        array = ZarrRows([(array, array.shape[0])], array.shape[1:], array.dtype)
    return indexing.LazilyIndexedArray(array)


def zarr_variable(array: zarr.Array, chunks=None):
    """A whole zarr array for an xarray variable: dask chunked like ``chunks`` when dask is installed."""
    if HAVE_DASK:
        import dask.array as da

        return da.from_zarr(array, chunks=chunks) if chunks is not None else da.from_zarr(array)
    return lazily(array)


def concatenated_rows(name: str, parts: list[tuple[str, int, int]], trailing: tuple[int, ...], dtype):
    """Rows of the arrays ``parts`` = ``[(zarr array path, rows, rows per block)]``, one after another.

    Each array is cut into blocks of its ``rows per block`` (its shard or
    chunk length, so that a block reads whole files); arrays without rows
    are skipped. ``trailing`` is the shape of one row. A dask array, or
    without dask a lazily indexed one.
    """
    if not HAVE_DASK:
        return lazily(ZarrRows([(path, n) for path, n, _ in parts], trailing, dtype))
    import dask.array as da

    dtype = np.dtype(dtype)
    token = _token(name, parts, trailing, dtype.str)
    graph: dict = {}
    blocks: list[int] = []
    tail = (0,) * len(trailing)
    for path, n_rows, block in parts:
        for start in range(0, n_rows, block):
            stop = min(n_rows, start + block)
            graph[(token, len(blocks), *tail)] = (_read_rows, path, start, stop)
            blocks.append(stop - start)
    if not blocks:
        return da.zeros((0, *trailing), dtype=dtype)
    return da.Array(graph, token, chunks=(tuple(blocks), *((n,) for n in trailing)), dtype=dtype)


def tile_coordinates(slide_ids: list[str], counts: list[int]) -> dict:
    """Per-tile ``slide_id`` and ``slide_index`` coordinates (numpy) and the ``slide`` coordinate, for xarray.

    Per-tile numpy coordinates make xarray's idioms work the same on tiles and
    embeddings: ``ds.sel(slide_id=s)`` (with the index set by
    :func:`with_slide_index`), ``ds.isel(tile=ds.slide_id == s)``,
    ``ds.where(ds.slide_id == s, drop=True)``, ``ds.groupby("slide_id")``.
    """
    ids = np.asarray(slide_ids, dtype=str) if slide_ids else np.zeros(0, dtype="<U1")
    return {
        "slide_id": ("tile", np.repeat(ids, counts)),
        "slide_index": ("tile", np.repeat(np.arange(len(ids), dtype=np.int32), counts)),
        "slide": ("slide", ids),
    }


def with_slide_index(dataset):
    """``dataset`` with an index on its per-tile ``slide_id``, so that ``.sel(slide_id=...)`` works."""
    return dataset.set_xindex("slide_id")
