"""Write whole shard files of a one-image-per-chunk zarr array without zarr's per-chunk machinery.

zarr 3 writes a shard by slicing, copying and scheduling every inner chunk
through its asyncio codec pipeline: for 224-px JPEG tiles that bookkeeping
costs about twice the JPEG encoding itself (~0.6 ms a tile), on one thread,
holding the GIL. A tile store only ever writes whole shards of images encoded
one per chunk, so the writer encodes them on the coding threads (the run's ``--threads``) and lays out the shard
as the zarr v3 ``sharding_indexed`` codec specifies: the chunks' bytes, then
an index of ``(offset, length)`` uint64 pairs in C order of the inner chunks
(``2**64 - 1`` for absent ones), then the CRC32C of the index. The array's
metadata is checked to be exactly that layout first, and the tests compare
the files byte for byte with zarr's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

from storage.atomic import write_bytes_atomic
from storage.jpeg_codec import JpegCodec

_ABSENT = np.iinfo(np.uint64).max
_INDEX_GAP = 256  # images apart whose index entries are still read in one go (4 kB)


class UnsupportedShardLayoutError(ValueError):
    """The array's codecs are not the layout :func:`shard_bytes` writes."""


def jpeg_codec_of(array: zarr.Array) -> JpegCodec:
    """The array's JPEG codec, after checking the array uses exactly the layout this module writes."""
    codecs = array.metadata.codecs
    sharding = codecs[0] if len(codecs) == 1 else None
    if (
        not isinstance(sharding, ShardingCodec)
        or sharding.index_location != ShardingCodecIndexLocation.end
        or len(sharding.codecs) != 1
        or not isinstance(sharding.codecs[0], JpegCodec)
        or [type(c) for c in sharding.index_codecs] != [BytesCodec, Crc32cCodec]
        or sharding.index_codecs[0].endian.value != "little"
        or any(n != 1 for n in sharding.chunk_shape[:-3])
        or not isinstance(array.metadata.chunk_key_encoding, DefaultChunkKeyEncoding)
        or array.metadata.chunk_key_encoding.separator != "/"
    ):
        raise UnsupportedShardLayoutError(f"{array.path}: not a sharded one-JPEG-per-chunk layout")
    return sharding.codecs[0]


def shard_bytes(chunks: Sequence[bytes], chunks_per_shard: int) -> bytes:
    """A shard file holding ``chunks`` as its first inner chunks (the rest absent)."""
    index = np.full((chunks_per_shard, 2), _ABSENT, dtype="<u8")
    lengths = np.fromiter((len(c) for c in chunks), dtype=np.uint64, count=len(chunks))
    index[: len(chunks), 1] = lengths
    index[: len(chunks), 0] = np.cumsum(lengths) - lengths
    index_bytes = index.tobytes()
    return b"".join((*chunks, index_bytes, google_crc32c.value(index_bytes).to_bytes(4, "little")))


def _shard_key(array_path: Path, array: zarr.Array, shard_position: int | tuple[int, ...]) -> Path:
    """The file of the shard at ``shard_position`` (an int: along the first dimension only)."""
    position = (shard_position,) if isinstance(shard_position, int) else tuple(shard_position)
    return array_path / "c" / "/".join(str(i) for i in (*position, *[0] * (array.ndim - len(position))))


def _chunks_per_shard(array: zarr.Array) -> int:
    return math.prod(array.shards) // math.prod(array.chunks)


def write_shard(array_path: Path, array: zarr.Array, shard_position: int | tuple[int, ...], images: np.ndarray) -> None:
    """Encode ``images`` and write them as one shard of the local ``array`` at ``array_path``, atomically.

    ``shard_position`` is the shard's index along the leading dimensions (an
    int for the first only); the images fill the shard's first chunks in C
    order. Readers see the old shard file or the new one, never part of it.
    """
    codec = jpeg_codec_of(array)
    data = shard_bytes(codec.encode_images(images), _chunks_per_shard(array))
    write_bytes_atomic(_shard_key(array_path, array, shard_position), data)


def read_shard_encoded(
    array_path: Path, array: zarr.Array, shard_position: int | tuple[int, ...], count: int, *, start: int = 0
) -> list[bytes]:
    """The JPEG bytes of images ``[start, start + count)`` of one shard of the local ``array``, not decoded.

    Two reads: the index (checked against its CRC32C), then the one byte
    range that holds those images (consecutive images are stored back to
    back). A training stream keeps windows of such pieces in memory in this
    form (~27 kB a 224-px tile, a sixth of the decoded size) and decodes a
    tile only when a step uses it.

    Raises
    ------
    ValueError
        When the shard's index is corrupt or lacks one of the images asked for.
    """
    jpeg_codec_of(array)
    key = _shard_key(array_path, array, shard_position)
    chunks_per_shard = _chunks_per_shard(array)
    if start < 0 or count < 0 or start + count > chunks_per_shard:
        raise ValueError(f"{key}: images [{start}, {start + count}) are outside a shard of {chunks_per_shard}")
    index_length = 16 * chunks_per_shard + 4
    with key.open("rb") as file:
        file.seek(-index_length, 2)
        tail = file.read(index_length)
        if len(tail) != index_length or google_crc32c.value(tail[:-4]).to_bytes(4, "little") != tail[-4:]:
            raise ValueError(f"{key}: shard index checksum mismatch")
        index = np.frombuffer(tail[:-4], dtype="<u8").reshape(chunks_per_shard, 2)[start : start + count]
        if (index == _ABSENT).any():
            raise ValueError(f"{key}: shard holds fewer than {start + count} images")
        if not count:
            return []
        first, end = int(index[:, 0].min()), int((index[:, 0] + index[:, 1]).max())
        file.seek(first)
        data = file.read(end - first)
    if len(data) != end - first:
        raise ValueError(f"{key}: shard is truncated")
    return [data[offset - first : offset - first + length] for offset, length in index.tolist()]


def _read_at(file, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset``: every read of :func:`read_shard_images` goes through here (tests count them)."""
    file.seek(offset)
    return file.read(size)


def read_shard_images(
    array_path: Path, array: zarr.Array, shard_position: int | tuple[int, ...], images: Sequence[int]
) -> list[bytes]:
    """The JPEG bytes of the images ``images`` (indices within the shard, any order) of one shard, not decoded.

    Reads only what those images need: their index entries (16 bytes an
    image; entries of images close together in one read), then each run of
    consecutive images in one read. A training step that uses a few tiles of a shard thus reads
    about their own bytes, where :func:`read_shard_encoded` reads the whole
    index (32 kB for 2,048 tiles) and every image between the first and the
    last. The price: the index's CRC32C cannot be checked without the whole
    index; a corrupt entry shows as a range outside the file or a JPEG that
    does not decode.

    Raises
    ------
    ValueError
        When an image is outside the shard, absent, or its bytes lie outside the file.
    """
    jpeg_codec_of(array)
    key = _shard_key(array_path, array, shard_position)
    chunks_per_shard = _chunks_per_shard(array)
    wanted = sorted(set(images))
    if not wanted:
        return []
    if wanted[0] < 0 or wanted[-1] >= chunks_per_shard:
        raise ValueError(f"{key}: images {wanted[0]}..{wanted[-1]} are outside a shard of {chunks_per_shard}")
    found: dict[int, bytes] = {}
    with key.open("rb") as file:
        index_start = file.seek(0, 2) - (16 * chunks_per_shard + 4)
        if index_start < 0:
            raise ValueError(f"{key}: shard is shorter than its index")
        entries = np.empty((len(wanted), 2), dtype="<u8")
        first = 0
        while first < len(wanted):  # one read of the entries of images near each other (gaps under 4 kB)
            last = first
            while last + 1 < len(wanted) and wanted[last + 1] - wanted[last] <= _INDEX_GAP:
                last += 1
            block = _read_at(file, index_start + 16 * wanted[first], 16 * (wanted[last] - wanted[first] + 1))
            rows = np.frombuffer(block, dtype="<u8").reshape(-1, 2)
            entries[first : last + 1] = rows[np.array(wanted[first : last + 1]) - wanted[first]]
            first = last + 1
        if (entries == _ABSENT).any() or (entries[:, 0] + entries[:, 1] > index_start).any():
            raise ValueError(f"{key}: shard holds no valid bytes for some of images {wanted[0]}..{wanted[-1]}")
        run = [0]  # positions in ``wanted`` of a run of images stored back to back
        for position in range(1, len(wanted) + 1):
            if position < len(wanted) and entries[position, 0] == entries[position - 1].sum():
                run.append(position)
                continue
            start, end = int(entries[run[0], 0]), int(entries[run[-1]].sum())
            data = _read_at(file, start, end - start)
            if len(data) != end - start:
                raise ValueError(f"{key}: shard is truncated")
            for i in run:
                offset = int(entries[i, 0]) - start
                found[wanted[i]] = data[offset : offset + int(entries[i, 1])]
            run = [position]
    return [found[image] for image in images]


def read_shard(array_path: Path, array: zarr.Array, shard_position: int | tuple[int, ...], count: int) -> np.ndarray:
    """Decode the first ``count`` images of one shard of the local ``array``: ``[count, H, W, 3]`` uint8.

    The inverse of :func:`write_shard`: the shard read by
    :func:`read_shard_encoded`, the JPEGs decoded on the coding threads.
    zarr's own read of a shard goes through its per-chunk asyncio pipeline at
    about a third of this speed; an embedding job reads every tile once and
    wants the images fast.

    Raises
    ------
    ValueError
        When the shard's index is corrupt or lacks one of the images asked for.
    """
    images = jpeg_codec_of(array).decode_images(read_shard_encoded(array_path, array, shard_position, count))
    return np.stack(images).reshape(count, *array.chunks[-3:])
