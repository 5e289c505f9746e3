"""A store's consolidated index: one small JSON file that lists every published item with its sizes.

Why: a reader that opens a 6,093-slide store by walking every slide group
reads ~20,000 small metadata files (a minute on a shared file system); the
index lets it read one. It is a cache, never the truth: the truth is the
folder of published items (one ``readdir``) and each item's own group. A
reader checks the index against that listing and reads the groups of items
the index lacks (a slide published a moment ago, or a store made before
indexes existed), saying so in a warning.

Layout, under ``STORE/index/``::

    index.json                   {"items": {item: entry}}: the merged entries
    pending/<ns>.<random>.json   [{"item": …, "entry": …}]: entries not merged yet (one file per publish;
                                 entry null: the item was removed)
    compacting.lock              held while entries are merged (created with O_EXCL)

A publisher writes its entry as a new pending file after its item is
published; no two publishers ever write the same file, so any number of
worker processes may publish at once, on any POSIX file system (NFS and
Lustre included: only ``rename`` and ``O_EXCL`` are relied on, no ``flock``
nor ``O_APPEND``). Once ``compact_after`` entries are pending, the publisher
that gets the lock merges them into ``index.json`` (written by rename) and
deletes exactly the pending files it merged; the others go on. A reader
reads ``index.json`` and the few pending files, later ones overriding. A lock
left by a killed process is taken over after ``LOCK_STALE_S``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

from storage.atomic import write_bytes_atomic

logger = logging.getLogger(__name__)

COMPACT_AFTER = 32
LOCK_STALE_S = 120.0


class StoreIndex:
    """The index of one store's published items (slides): ``{item: entry}``, entries small JSON dicts."""

    def __init__(self, folder: Path, *, compact_after: int = COMPACT_AFTER, label: str | None = None) -> None:
        self.folder = folder
        self.label = label or str(folder.parent)  # what messages call it: the store, by default
        self.compact_after = compact_after  # more: fewer rewrites of index.json by publishers, more files per read
        self.path = folder / "index.json"
        self.pending_dir = folder / "pending"
        self._lock_path = folder / "compacting.lock"

    def exists(self) -> bool:
        return self.path.is_file() or bool(self._pending_names())

    def read(self) -> dict[str, dict]:
        """Every entry, merged and pending (later entries override earlier ones); ``{}`` without an index.

        The pending files are listed before ``index.json`` is read, and a
        compaction renames ``index.json`` before it deletes what it merged: so
        an entry is in the index read, or in a pending file still there, or
        its file vanished, which means a newer ``index.json`` holds it (read again).
        """
        names = self._pending_names()
        items = self._merged()
        pending, vanished = self._read_pending(names)
        if vanished:
            items = self._merged()
        _apply(items, pending)
        return items

    def add(self, item: str, entry: dict) -> None:
        """Record ``item``'s entry (call after the item is published); merge pending entries when many."""
        self._write_pending([(item, entry)])
        if self._count_pending() >= self.compact_after:
            self.compact()

    def add_many(self, entries: dict[str, dict]) -> None:
        """Record several entries at once and merge them (a preparation step, a repair after a walk)."""
        if entries:
            self._write_pending(entries.items())
            self.compact()

    def remove_many(self, items: list[str]) -> None:
        """Forget ``items`` (call after they are deleted); pending until the next merge, like an addition."""
        if items:
            self._write_pending((item, None) for item in items)
            if self._count_pending() >= self.compact_after:
                self.compact()

    def compact(self) -> bool:
        """Merge the pending entries into ``index.json`` unless another process is merging; True if merged."""
        if not self._take_lock():
            return False
        try:
            items = self._merged()
            merged, _ = self._read_pending(self._pending_names())
            _apply(items, merged)
            write_bytes_atomic(self.path, json.dumps({"items": items}, separators=(",", ":")).encode())
            for path, _ in merged:
                path.unlink(missing_ok=True)
        finally:
            self._lock_path.unlink(missing_ok=True)
        return True

    def _merged(self) -> dict[str, dict]:
        try:
            return json.loads(self.path.read_bytes())["items"]
        except FileNotFoundError:
            return {}

    def _write_pending(self, entries) -> None:
        records = [{"item": item, "entry": entry} for item, entry in entries]
        # One file for a batch: names sort by time, so a later entry for an item overrides an earlier one.
        name = f"{time.time_ns():020d}.{uuid.uuid4().hex[:12]}.json"
        write_bytes_atomic(self.pending_dir / name, json.dumps(records, separators=(",", ":")).encode())

    def _pending_names(self) -> list[str]:
        """Names of the pending files, oldest first."""
        try:
            return sorted(name for name in os.listdir(self.pending_dir) if name.endswith(".json"))
        except FileNotFoundError:
            return []

    def _count_pending(self) -> int:
        return len(self._pending_names())

    def _read_pending(self, names: list[str]) -> tuple[list[tuple[Path, dict]], bool]:
        """``(file, record)`` of the pending entries ``names``, and whether any file was merged away meanwhile."""
        found: list[tuple[Path, dict]] = []
        vanished = False
        for name in names:
            path = self.pending_dir / name
            try:
                records = json.loads(path.read_bytes())
            except FileNotFoundError:
                vanished = True
                continue
            found.extend((path, record) for record in records)
        return found, vanished

    def _take_lock(self) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                handle = os.open(self._lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    age = time.time() - self._lock_path.stat().st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile: try once more
                if age < LOCK_STALE_S:
                    return False
                logger.warning("%s: taking over a merge lock left %.0f s ago", self._lock_path, age)
                self._lock_path.unlink(missing_ok=True)
                continue
            os.close(handle)
            return True
        return False


def _apply(items: dict[str, dict], pending: list[tuple[Path, dict]]) -> None:
    """Apply pending records to ``items`` in order: an entry replaces the item's, ``None`` removes the item."""
    for _, record in pending:
        if record["entry"] is None:
            items.pop(record["item"], None)
        else:
            items[record["item"]] = record["entry"]


def published_names(folder: Path) -> list[str]:
    """Items published into ``folder`` (one entry each, renamed in whole), sorted; one ``readdir``, no ``stat``.

    Hidden names and zarr's own ``zarr.json`` are not items.
    """
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name != "zarr.json" and not name.startswith("."))


def indexed_entries(index: StoreIndex, names: list[str], walk, what: str) -> dict[str, dict]:
    """The entries of ``names`` from ``index``; items it lacks are read by ``walk(name)`` and added to it.

    ``walk`` returns the entry of one item read from its own group. Entries
    the index holds for items that are no longer published are dropped. Both
    cases are logged: a reader that walks many groups is slow, and the
    warning says why. Writing the walked entries back is best effort: a
    reader without write permission still gets the right answer.
    """
    known = index.read()
    missing = [name for name in names if name not in known]
    if missing:
        reason = "has no index" if not index.exists() else f"index lacks {len(missing)} of {len(names)} {what}"
        log = logger.warning if len(missing) > 1 or not index.exists() else logger.info
        log("%s %s; reading their groups", index.label, reason)
        walked = {name: walk(name) for name in missing}
        try:
            index.add_many(walked)
        except OSError as error:
            logger.info("%s: could not update the index (%s)", index.label, error)
        known.update(walked)
    unpublished = set(known) - set(names)
    if unpublished:
        logger.warning("%s: the index names %d %s that are not published; ignored", index.label, len(unpublished), what)
    return {name: known[name] for name in names}
