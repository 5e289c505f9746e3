"""Atomic file writes and file checksums, each done one way for the whole code base."""

import hashlib
import os

import pytest

from storage.atomic import atomic_path, write_bytes_atomic
from storage.checksum import sha256_of_file


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "weights.pt"
    write_bytes_atomic(path, b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.pt"]


def test_a_clean_write_replaces_the_file_readable_by_others(tmp_path):
    path = tmp_path / "weights.pt"
    write_bytes_atomic(path, b"old")
    with atomic_path(path) as temporary:
        assert temporary.parent == path.parent and temporary.name.startswith(".")
        temporary.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # nothing visible until the block ends
    assert path.read_bytes() == b"new"
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_sha256_of_file_matches_hashlib_over_the_whole_content(tmp_path):
    data = os.urandom(3 << 20) + b"tail"
    path = tmp_path / "slide.svs"
    path.write_bytes(data)
    assert sha256_of_file(path) == sha256_of_file(str(path)) == hashlib.sha256(data).hexdigest()
