"""The run manifest: one record per slide with its latest status.

Each worker writes its slide's record on its own, atomically, as the
attributes of ``status/<slide_id>/zarr.json``; no process ever rewrites a
shared file, so parallel workers cannot race and a killed run loses no record.
These records are the truth a resume relies on.

:func:`read_manifest` gathers them into one table. Reading 6,093 records one
by one costs 6,093 opens (seconds on a shared file system), so a store with
an ``index/`` folder also keeps a copy of every record in a consolidated index
(``index/records/``, see :mod:`storage.store_index`), added after the record
itself is written. A reader reads that index and one listing of ``status/``,
and reads from its file any record the index lacks, saying so.

The copy can be one version behind for a slide whose worker was killed
between its two writes. Where that matters it shows: a slide tiled anew
after a failure is published (in ``slides/``) while its copied record still
says it failed. A reader therefore also lists ``slides/`` and reads from its
file the record of every published slide whose copy is not ``done``; those
found behind are said in a warning and written back to the copy, so the
next reader (the end of the next run, which writes the QC page) reads the
copy alone. Other versions behind (one failure for another) are not detected
(the copy is for reporting); ``read_manifest(store, walk=True)`` reads every
record file instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from storage.atomic import write_zarr_group_atomic
from storage.store_index import StoreIndex, indexed_entries, published_names
from storage.tile_store import RunStore, TileStore

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

DONE, FAILED, SKIPPED = "done", "failed", "skipped"
REJECTED_PREFIX = "rejected-"  # records of refused slide-list rows: rejected-<row>-<hash of the path>
# Records change often during a run: merging the copies every 256 writes keeps the rewrites of the
# consolidated file (a few MB at 6,093 slides) rare, at the cost of up to 256 small files per read.
_RECORDS_COMPACT_AFTER = 256


@dataclass
class SlideRecord:
    """What happened to one slide in a run.

    ``status`` is ``done`` (tiled now, possibly with 0 tiles), ``failed`` (see
    ``error``), or ``skipped`` (already complete in the store; never persisted,
    the stored record of the run that made it stays).
    """

    slide_id: str
    source_path: str
    status: str
    n_tiles: int = 0
    seconds: float = 0.0
    error: str = ""
    error_type: str = ""
    message: str = ""
    finished_at: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def failed_record(
    slide_id: str, source_path: Path | str, error: BaseException, *, unexpected: bool = False, **fields: object
) -> SlideRecord:
    """A ``failed`` record of ``error``; other :class:`SlideRecord` fields (``seconds``, ``extra``...) by name.

    ``unexpected`` marks a crash rather than a refused input (retries exhausted, a bug, a lost worker):
    the message then names the exception type too, since it is not one of the project's own errors.
    """
    message = f"{type(error).__name__}: {error}" if unexpected else str(error)
    return SlideRecord(
        slide_id=slide_id,
        source_path=str(source_path),
        status=FAILED,
        error=message,
        error_type=type(error).__name__,
        **fields,
    )  # type: ignore[arg-type]


def write_record(store: RunStore, record: SlideRecord) -> None:
    """Persist ``record`` as the slide's latest status, its ``source_path`` made absolute.

    A relative path means nothing once the run's working directory is
    forgotten; the manifest names the file wherever it is read from.
    """
    if record.source_path and not os.path.isabs(record.source_path):
        record = replace(record, source_path=os.path.abspath(record.source_path))
    write_zarr_group_atomic(store.status_dir / record.slide_id, record.to_dict())
    index = records_index(store)
    if index is not None:  # after the record: the copy is never ahead of the truth
        index.add(record.slide_id, record.to_dict())


def records_index(store: RunStore) -> StoreIndex | None:
    """The consolidated copy of the store's records, for stores with an ``index/`` folder (tile stores)."""
    if "index" not in store.FOLDERS:
        return None
    return StoreIndex(
        store.root / "index" / "records", compact_after=_RECORDS_COMPACT_AFTER, label=f"{store.root} (records)"
    )


def clear_rejected_records(store: RunStore) -> None:
    """Forget the slide-list rows refused by earlier runs; a run records again those it still refuses."""
    cleared = []
    for folder in store.status_dir.glob(f"{REJECTED_PREFIX}*"):
        shutil.rmtree(folder, ignore_errors=True)
        cleared.append(folder.name)
    index = records_index(store)
    if index is not None:
        index.remove_many(cleared)


def read_record(store: RunStore, slide_id: str) -> SlideRecord | None:
    fields = _record_fields(store, slide_id)
    return None if fields is None else SlideRecord(**fields)


def _record_fields(store: RunStore, slide_id: str) -> dict | None:
    """The fields of ``slide_id``'s record, read from its own file; None if it has none."""
    path = store.status_dir / slide_id / "zarr.json"
    if not path.is_file():
        return None
    return json.loads(path.read_bytes())["attributes"]


def _all_record_fields(store: RunStore, walk: bool) -> list[dict]:
    """The fields of every record, sorted by slide id (see :func:`read_records`)."""
    names = published_names(store.status_dir)
    index = records_index(store)
    if walk or index is None:
        found = [_record_fields(store, name) for name in names]
    else:
        indexed = indexed_entries(index, names, lambda name: _record_fields(store, name), "records")
        if isinstance(store, TileStore):
            indexed.update(_catch_up(store, index, indexed))
        found = list(indexed.values())
    return [fields for fields in found if fields is not None]


def _catch_up(store: TileStore, index: StoreIndex, indexed: dict[str, dict | None]) -> dict[str, dict]:
    """The records of published slides that ``indexed`` (the copy) does not say are ``done``, from their files.

    Every published slide's latest record is ``done`` (a slide is published
    by the run that tiles it, and never replaced), so the copy is behind for
    each published slide it records otherwise: its worker was killed between
    the record and its copy. Those records are read from their files, and the
    ones that differ are written back to the copy (best effort, as a walk's).
    One listing of ``slides/``; no file read when the copy is up to date.
    """
    published = store.complete_slide_ids()
    suspects = [name for name in published if name in indexed and (indexed[name] or {}).get("status") != DONE]
    read = {name: _record_fields(store, name) for name in suspects}
    behind = {name: fields for name, fields in read.items() if fields is not None and fields != indexed[name]}
    if behind:
        logger.warning(
            "%s: the records' copy was behind for %d of %d published slides (a worker killed between a record "
            "and its copy); read them from their files and updated the copy",
            store.root,
            len(behind),
            len(published),
        )
        try:
            index.add_many(behind)
        except OSError as error:
            logger.info("%s: could not update the records' copy (%s)", store.root, error)
    return behind


def read_records(store: RunStore, *, walk: bool = False) -> list[SlideRecord]:
    """Every record of the store, sorted by slide id.

    From the consolidated index, checked against one listing of
    ``status/``; records the index lacks (a store made before it existed, a
    record written a moment ago) are read from their files, with a warning.
    ``walk`` reads every record file and ignores the index.
    """
    return [SlideRecord(**fields) for fields in _all_record_fields(store, walk)]


def read_manifest(store: TileStore | Path | str, *, walk: bool = False) -> pd.DataFrame:
    """All slide records of the store, one row per slide, sorted by slide id (see :func:`read_records`).

    Rows are made from the records' fields as read: ``dataclasses.asdict``
    of 6,093 records would cost more than reading them.
    """
    import pandas as pd  # for analysts; tiling workers never need it

    store = store if isinstance(store, TileStore) else TileStore(store)
    columns = list(SlideRecord.__dataclass_fields__)
    return pd.DataFrame(_all_record_fields(store, walk), columns=columns)
