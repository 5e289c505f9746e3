"""Atomic file writes, atomic folder replacement and file checksums, each done one way for the whole code base."""

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from storage.atomic import atomic_path, replace_folder_atomic, write_bytes_atomic
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


def _finished_folder(root: Path, version: int) -> Path:
    """A registration-like folder whose two files both name ``version``."""
    staging = root / "staging" / f"condition.{version}"
    staging.mkdir(parents=True)
    (staging / "registration.json").write_text(json.dumps({"version": version}))
    (staging / "TransformParameters.0.txt").write_text(f"version {version}\n" * 50)
    return staging


def _read_folder(target: Path) -> int:
    """The version in ``target``, both files read through one opening of the folder (as a loader would)."""
    folder = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    return _read_opened(folder)


def _read_opened(folder: int) -> int:
    try:
        with open(os.open("registration.json", os.O_RDONLY, dir_fd=folder)) as file:
            version = json.load(file)["version"]
        with open(os.open("TransformParameters.0.txt", os.O_RDONLY, dir_fd=folder)) as file:
            assert file.read() == f"version {version}\n" * 50, "a folder mixing two versions"
    finally:
        os.close(folder)
    return version


def _keep_reading(target: str, stop, results) -> None:
    seen, absent = set(), 0
    while not stop.is_set():
        try:
            folder = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            absent += 1
            continue
        try:
            seen.add(_read_opened(folder))
        except FileNotFoundError:
            pass  # this test publishes back to back: a version two publishes old is deleted under a slow reader
    results.put((sorted(seen), absent))


@pytest.mark.slow
def test_a_folder_replaced_while_another_process_reads_it_is_never_absent(tmp_path):
    target = tmp_path / "registration" / "condition"
    replace_folder_atomic(_finished_folder(tmp_path, 0), target)
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    reader = context.Process(target=_keep_reading, args=(str(target), stop, results))
    reader.start()
    time.sleep(2.0)  # the reader has started reading
    for version in range(1, 301):
        replace_folder_atomic(_finished_folder(tmp_path, version), target)
    stop.set()
    seen, absent = results.get(timeout=60)
    reader.join(timeout=60)
    assert reader.exitcode == 0 and absent == 0
    assert len(seen) > 2 and _read_folder(target) == 300


def test_a_replace_killed_before_its_swap_leaves_the_old_folder_and_its_debris_goes_next_time(tmp_path, monkeypatch):
    target = tmp_path / "registration" / "condition"
    neighbour = tmp_path / "registration" / "condition.b"  # a name that starts like the target's
    replace_folder_atomic(_finished_folder(tmp_path, 1), target)
    replace_folder_atomic(_finished_folder(tmp_path, 9), neighbour)

    def killed(*args):
        raise KeyboardInterrupt("killed before the swap")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        replace_folder_atomic(_finished_folder(tmp_path, 2), target)
    monkeypatch.undo()
    assert _read_folder(target) == 1
    replace_folder_atomic(_finished_folder(tmp_path, 3), target)
    replace_folder_atomic(_finished_folder(tmp_path, 4), target)
    assert _read_folder(target) == 4 and _read_folder(neighbour) == 9
    hidden = sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".condition.") and ".b." not in p.name)
    assert len(hidden) == 2 and {_read_folder(target.parent / name) for name in hidden} == {3, 4}  # new and previous


def test_a_plain_folder_from_an_older_version_is_replaced_by_a_link(tmp_path):
    target = tmp_path / "registration" / "condition"
    target.parent.mkdir()
    os.rename(_finished_folder(tmp_path, 1), target)
    replace_folder_atomic(_finished_folder(tmp_path, 2), target)
    assert target.is_symlink() and _read_folder(target) == 2
    replace_folder_atomic(_finished_folder(tmp_path, 3), target)
    assert sorted(_read_folder(p) for p in target.parent.iterdir() if p.name.startswith(".")) == [2, 3]
