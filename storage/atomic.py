"""Small files that appear whole or not at all.

Readers (a rerun, an analyst, a concurrent worker) must never see half a
JSON record or half a PNG: each is written to a hidden temporary file in the
same folder and renamed over its final name, which POSIX makes atomic.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary file beside ``path`` to write; it replaces ``path`` when the block ends cleanly.

    For writers that want a file name (``torch.save``, safetensors) rather than bytes. On an error
    the temporary file is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        os.fchmod(handle, 0o644)  # mkstemp makes 0600; stores are shared with analysts
        os.close(handle)
        yield temporary
        with temporary.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_json_atomic(path: Path, document: object) -> None:
    """Write ``document`` as indented JSON, atomically."""
    write_bytes_atomic(path, json.dumps(document, indent=2, sort_keys=True, default=str).encode())


def write_zarr_group_atomic(path: Path, attributes: dict[str, object]) -> None:
    """Create a zarr v3 group whose metadata (with ``attributes``) is written atomically."""
    write_json_atomic(path / "zarr.json", {"zarr_format": 3, "node_type": "group", "attributes": attributes})


def write_opaque_folder_atomic(path: Path, attributes: dict[str, object]) -> None:
    """Declare ``path`` a folder of plain files (JSON, PNG, markers) that zarr must not list.

    zarr lists a group's folder and warns about every entry without
    ``zarr.json``. An array is never listed: zarr reads its metadata and,
    on demand, its chunk keys under ``c/``. So such a folder is declared an
    empty array (shape ``[0]``, no chunks) whose attributes say what the files
    are; ``zarr.open_group(store).tree()`` then shows it without a warning.
    """
    write_json_atomic(
        path / "zarr.json",
        {
            "zarr_format": 3,
            "node_type": "array",
            "shape": [0],
            "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [{"name": "bytes"}],
            "attributes": attributes,
        },
    )
