"""The tile store on disk: one zarr v3 hierarchy, one group per complete slide.

Layout (see ``docs/storage.md``)::

    STORE/zarr.json                root group: layout version, tiling parameters, software
    STORE/slides/<slide_id>/       a complete slide: tiles, coords, tissue_fraction, tissue_mask
    STORE/status/<slide_id>/       the slide's latest run record (done / failed), as group attributes
    STORE/qc/<slide_id>.png        thumbnail with tissue mask and tile grid
    STORE/staging/<slide_id>.<id>/ a slide being written; renamed into slides/ when complete
    STORE/index/                   the consolidated index: slide ids, tile counts, shard sizes

A slide is written in ``staging/`` and renamed into ``slides/`` in one
``rename``: readers and reruns see either the whole slide or none of it, and a
killed run leaves only staging debris, removed by the next run. A published
slide is never replaced: a second copy (a task run twice by Dask after a lost
worker, a retry racing its first attempt) finds the slide there and is
dropped, so the slide never disappears and its ``created_at`` (the embedding
store's stamp of it) never changes.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import ClassVar, Self

import zarr

from storage.atomic import write_opaque_folder_atomic, write_zarr_group_atomic
from storage.store_index import StoreIndex, indexed_entries, published_names

LAYOUT_NAME = "distillpath.tile-store"
LAYOUT_VERSION = 1


class StoreError(Exception):
    """The store cannot be used as asked; the message names the store."""


def software_version() -> str:
    return version("distillpath")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _effective_parameters(parameters: dict, without_effect: Collection[str]) -> dict:
    return {key: value for key, value in parameters.items() if key not in without_effect}


def _flat(parameters: dict, prefix: str = "") -> dict:
    """Nested sections as dotted keys, so that a refusal names the one field that differs."""
    flat = {}
    for key, value in parameters.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class RunStore:
    """What every store of this project shares: a versioned root, a parameter check, a run lock, staging.

    Subclasses name their layout, the root attribute holding their parameters,
    and their top-level folders. Use :meth:`create_or_open` in the process
    that drives a run, and the constructor in worker processes, which only
    need the paths.
    """

    LAYOUT_NAME: ClassVar[str]
    LAYOUT_VERSION: ClassVar[int] = 1
    KIND: ClassVar[str]  # "tile store", in messages
    PARAMETERS_KEY: ClassVar[str]  # root attribute holding the run parameters
    FOLDERS: ClassVar[dict[str, str]] = {}  # top-level groups besides status/, qc/ and staging/, with their purpose
    # Folders of plain files, declared opaque to zarr (see storage.atomic.write_opaque_folder_atomic).
    OPAQUE: ClassVar[frozenset[str]] = frozenset({"qc", "staging", "index", "done", "registration"})

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.status_dir = self.root / "status"
        self.qc_dir = self.root / "qc"
        self.staging_dir = self.root / "staging"

    @functools.cached_property
    def _run_lock(self):
        """The store's run lock, made on first use: readers never lock, and its module needs psutil."""
        from storage.run_lock import LOCK_NAME, RunLock

        return RunLock(self.staging_dir / LOCK_NAME, str(self.root))

    @classmethod
    def create_or_open(
        cls, root: Path | str, parameters: dict, *, overwrite: bool = False, without_effect: Collection[str] = ()
    ) -> Self:
        """Open the store for a run with ``parameters``, creating it if needed.

        ``without_effect`` names the top-level parameters that change how a run
        works but not what it writes (the caller's to know, e.g. tiling's
        ``threads``): they are recorded, and a rerun may change them.

        Raises
        ------
        StoreError
            If ``root`` holds something that is not this kind of store, or a
            store made with other parameters (unless ``overwrite``).
        """
        store = cls(root)
        existing = store.read_attributes()
        if existing is None and store.root.exists() and any(store.root.iterdir()):
            raise StoreError(f"{store.root} exists and is not a distillpath {cls.KIND}; choose another --out")
        if existing is not None and overwrite:
            store._refuse_if_in_use()
            shutil.rmtree(store.root)
            existing = None
        if existing is not None:
            store._refuse_other_parameters(existing, parameters, without_effect)
        else:
            attributes = {
                "layout": cls.LAYOUT_NAME,
                "layout_version": cls.LAYOUT_VERSION,
                cls.PARAMETERS_KEY: parameters,
                "software_version": software_version(),
                "created_at": utc_now(),
            }
            write_zarr_group_atomic(store.root, attributes)
        folders = {
            **cls.FOLDERS,
            "status": "latest run record of each item",
            "qc": "QC pictures (PNG files) and the run's qc/index.html",
            "staging": "items being written, and the run lock",
        }
        for name, purpose in folders.items():
            metadata = store.root / name / "zarr.json"
            if name in cls.OPAQUE:
                if not metadata.exists() or json.loads(metadata.read_bytes()).get("node_type") != "array":
                    write_opaque_folder_atomic(store.root / name, {"description": purpose})  # also upgrades old stores
            elif not metadata.exists():
                write_zarr_group_atomic(store.root / name, {"description": purpose})
        return store

    @classmethod
    def check_can_open(
        cls, root: Path | str, parameters: dict, *, overwrite: bool = False, without_effect: Collection[str] = ()
    ) -> None:
        """Raise the :class:`StoreError` that :meth:`create_or_open` would, without writing anything.

        Commands call it before any server or worker starts, so that a store
        made with other parameters is refused at once.
        """
        store = cls(root)
        existing = store.read_attributes()
        if existing is None and store.root.exists() and any(store.root.iterdir()):
            raise StoreError(f"{store.root} exists and is not a distillpath {cls.KIND}; choose another --out")
        if existing is not None and not overwrite:
            store._refuse_other_parameters(existing, parameters, without_effect)

    def _refuse_other_parameters(self, existing: dict, parameters: dict, without_effect: Collection[str]) -> None:
        recorded = _flat(_effective_parameters(existing.get(self.PARAMETERS_KEY, {}), without_effect))
        wanted = _flat(_effective_parameters(json.loads(json.dumps(parameters)), without_effect))  # tuples: lists
        if recorded != wanted:
            changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
            detail = ", ".join(f"{k}: {recorded.get(k)!r} in the store, {wanted.get(k)!r} now" for k in changed)
            raise StoreError(
                f"{self.root} was made with other {self.PARAMETERS_KEY} parameters ({detail}); "
                "use --overwrite to redo it, or another --out"
            )

    def read_attributes(self) -> dict | None:
        """Root attributes, or ``None`` if ``root`` is not this kind of store."""
        try:
            attributes = dict(zarr.open_group(self.root, mode="r").attrs)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            return None
        return attributes if attributes.get("layout") == self.LAYOUT_NAME else None

    def qc_path(self, item: str) -> Path:
        return self.qc_dir / f"{item}.png"

    def new_staging_path(self, item: str) -> Path:
        """A fresh folder name for writing ``item``; retries never collide."""
        return self.staging_dir / f"{item}.{uuid.uuid4().hex[:12]}"

    def publish_folder_once(self, staging_path: Path, target: Path) -> bool:
        """Move a finished folder from staging to ``target`` in one ``rename``, unless ``target`` exists.

        ``rename(2)`` refuses to replace a non-empty folder, which makes it a
        compare-and-swap: of two processes publishing the same item at once,
        exactly one succeeds. Returns whether this call published; when it did
        not, the staging copy is deleted.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging_path, target)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(staging_path, ignore_errors=True)
            return False
        return True

    def publish_folder(self, staging_path: Path, target: Path) -> None:
        """Move a finished folder from staging to ``target``, replacing an older copy.

        Two renames: between them ``target`` is briefly absent. Only for the
        embeddings of a slide tiled anew, which no reader sees meanwhile: the
        slide's done markers are dropped before its group is remade, so
        :func:`~storage.embedding_store.open_embeddings` leaves it out until it
        is embedded again. Never for tile-store slides (see
        :meth:`publish_folder_once`); a registration redone is replaced in one
        step (:func:`storage.atomic.replace_folder_atomic`).
        """
        if target.exists():
            retired = self.staging_dir / f"{target.name}.retired.{uuid.uuid4().hex[:12]}"
            os.rename(target, retired)
            os.rename(staging_path, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging_path, target)

    def _refuse_if_in_use(self) -> None:
        """Raise if a run that may still be alive holds the lock (see :mod:`storage.run_lock`)."""
        from storage.run_lock import LockHeldError

        try:
            self._run_lock.refuse_if_held()
        except LockHeldError as error:
            raise StoreError(str(error)) from error

    def acquire_run_lock(self) -> None:
        """Refuse a second concurrent run on the same store at once; take over a dead run's lock."""
        from storage.run_lock import LockHeldError

        try:
            self._run_lock.acquire()
        except LockHeldError as error:
            raise StoreError(str(error)) from error

    def release_run_lock(self) -> None:
        """Release the lock if this run holds it; never another run's."""
        self._run_lock.release()

    def remove_staging_debris(self) -> None:
        """Delete half-written items left by a killed run (call with the run lock held)."""
        for entry in self.staging_dir.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


class TileStore(RunStore):
    """A tile store on a local or shared POSIX file system."""

    LAYOUT_NAME = LAYOUT_NAME
    KIND = "tile store"
    PARAMETERS_KEY = "tiling"
    FOLDERS = {"slides": "complete slides", "index": "consolidated index of the slides (JSON, docs/storage.md)"}

    def __init__(self, root: Path | str) -> None:
        super().__init__(root)
        self.slides_dir = self.root / "slides"
        self.index = StoreIndex(self.root / "index")

    def slide_path(self, slide_id: str) -> Path:
        return self.slides_dir / slide_id

    def is_complete(self, slide_id: str) -> bool:
        """A slide is complete once its group has been renamed into ``slides/``."""
        return (self.slide_path(slide_id) / "zarr.json").is_file()

    def complete_slide_ids(self) -> list[str]:
        """Ids of complete slides, sorted: one listing of ``slides/`` (only whole slides are ever renamed there)."""
        return published_names(self.slides_dir)

    def slide_entries(self) -> dict[str, dict]:
        """``{slide_id: {"n_tiles", "tiles_per_shard", "created_at", "n_rejected"}}`` of every complete slide, by id.

        ``n_rejected`` (tiles the tile QC rejected) is missing from entries
        indexed before it was; the QC page reads those groups and adds it.

        Read from the index (one file), checked against the listing of
        ``slides/``; slides the index lacks are read from their groups.
        """
        return indexed_entries(
            self.index, self.complete_slide_ids(), lambda s: slide_entry(self.slide_path(s)), "slides"
        )

    def publish(self, staging_path: Path, slide_id: str) -> bool:
        """Move a finished slide from staging into ``slides/`` atomically and index it.

        Returns False, deleting the staging copy, when the slide is already
        published: the published copy stays as it is.
        """
        entry = slide_entry(staging_path)
        if not self.publish_folder_once(staging_path, self.slide_path(slide_id)):
            return False
        self.index.add(slide_id, entry)
        return True


def slide_entry(group: Path) -> dict:
    """A slide's index entry, read from its group: tile count, tiles per shard, creation time, tiles rejected."""
    attributes = json.loads((group / "zarr.json").read_bytes())["attributes"]
    tiles = json.loads((group / "tiles" / "zarr.json").read_bytes())
    shard = tiles["chunk_grid"]["configuration"]["chunk_shape"][0]  # the outer chunk: a whole shard
    return {
        "n_tiles": int(tiles["shape"][0]),
        "tiles_per_shard": int(shard),
        "created_at": attributes.get("created_at"),
        "n_rejected": rejected_count(attributes),
    }


def rejected_count(attributes: dict) -> int:
    """Tiles the tile QC rejected, from a slide group's attributes (``n_rejected``: a count per reason)."""
    rejected = attributes.get("n_rejected", {})
    return sum(rejected.values()) if isinstance(rejected, dict) else int(rejected or 0)
