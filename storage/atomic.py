"""Small files, and folders that are replaced, that appear whole or not at all.

Readers (a rerun, an analyst, a concurrent worker) must never see half a
JSON record or half a PNG: each is written to a hidden temporary file in the
same folder and renamed over its final name, which POSIX makes atomic.
A folder cannot be renamed over a non-empty one; a folder that is replaced
is published as a link to a version of it (:func:`replace_folder_atomic`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
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


def replace_folder_atomic(staging: Path, target: Path) -> None:
    """Publish the finished folder ``staging`` at ``target``, replacing an older copy in one atomic step.

    ``target`` is a relative symbolic link to a hidden version folder beside
    it, ``.<name>.<random>``. The new version is renamed in beside the old one
    and a new link renamed over ``target``: replacing a link is one
    ``rename``, so a reader opening ``target`` finds the old version or the
    new one, never nothing, and a publish killed before that rename leaves the
    old one in place. The version replaced is kept until the next publish, so
    a reader that followed the old link just before the swap still finds its
    files; older versions, and those of killed publishes, are deleted. A plain
    folder at ``target`` (published before this function existed) is moved
    aside first: the one moment ``target`` is absent, once per folder.

    For one publisher per ``target`` at a time (the store's run lock), in a
    folder that zarr never lists (``OPAQUE``): zarr would warn of the hidden names.
    """
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    version = parent / f".{target.name}.{token}"
    os.rename(staging, version)
    link = parent / f".{target.name}.link-{token}"
    os.symlink(version.name, link)
    previous = os.readlink(target) if target.is_symlink() else None
    if previous is None and target.is_dir():
        previous = f".{target.name}.{uuid.uuid4().hex[:12]}"
        os.rename(target, parent / previous)
    os.replace(link, target)
    own = re.compile(rf"\.{re.escape(target.name)}\.(link-)?[0-9a-f]{{12}}")  # not ``.<name>.x.<random>``
    for entry in os.scandir(parent):
        if entry.name not in (version.name, previous) and own.fullmatch(entry.name):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
