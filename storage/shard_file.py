"""Write whole shard files of a one-image-per-chunk zarr array without zarr's per-chunk machinery.

zarr 3 writes a shard by slicing, copying and scheduling every inner chunk
through its asyncio codec pipeline: for 224-px JPEG tiles that bookkeeping
costs about twice the JPEG encoding itself (~0.6 ms a tile), on one thread,
holding the GIL. A tile store only ever writes whole shards of images encoded
one per chunk, so the writer encodes them on all cores and lays out the shard
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


def write_shard(array_path: Path, array: zarr.Array, shard_position: int | tuple[int, ...], images: np.ndarray) -> None:
    """Encode ``images`` and write them as one shard of the local ``array`` at ``array_path``, atomically.

    ``shard_position`` is the shard's index along the leading dimensions (an
    int for the first only); the images fill the shard's first chunks in C
    order. Readers see the old shard file or the new one, never part of it.
    """
    codec = jpeg_codec_of(array)
    position = (shard_position,) if isinstance(shard_position, int) else tuple(shard_position)
    key = array_path / "c" / "/".join(str(i) for i in (*position, *[0] * (array.ndim - len(position))))
    chunks_per_shard = math.prod(array.shards) // math.prod(array.chunks)
    write_bytes_atomic(key, shard_bytes(codec.encode_images(images), chunks_per_shard))
