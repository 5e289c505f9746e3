"""SHA-256 of a file, read in blocks: slides and weights files run to gigabytes."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of_file(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path``, for provenance records (sources, weights, exports)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
