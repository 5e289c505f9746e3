"""The run manifest: one record per slide with its latest status.

Each worker writes its slide's record on its own, atomically, as the
attributes of ``status/<slide_id>/zarr.json``; no process ever rewrites a
shared file, so parallel workers cannot race and a killed run loses no record.
:func:`read_manifest` gathers them into one table.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from storage.atomic import write_zarr_group_atomic
from storage.tile_store import RunStore, TileStore

if TYPE_CHECKING:
    import pandas as pd

DONE, FAILED, SKIPPED = "done", "failed", "skipped"
REJECTED_PREFIX = "rejected-"  # records of refused slide-list rows: rejected-<row>-<hash of the path>


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


def clear_rejected_records(store: RunStore) -> None:
    """Forget the slide-list rows refused by earlier runs; a run records again those it still refuses."""
    for folder in store.status_dir.glob(f"{REJECTED_PREFIX}*"):
        shutil.rmtree(folder, ignore_errors=True)


def read_record(store: RunStore, slide_id: str) -> SlideRecord | None:
    path = store.status_dir / slide_id / "zarr.json"
    if not path.is_file():
        return None
    return SlideRecord(**json.loads(path.read_text())["attributes"])


def read_manifest(store: TileStore | Path | str) -> pd.DataFrame:
    """All slide records of the store, one row per slide, sorted by slide id."""
    import pandas as pd  # for analysts; tiling workers never need it

    store = store if isinstance(store, TileStore) else TileStore(store)
    columns = list(SlideRecord.__dataclass_fields__)
    rows = []
    if store.status_dir.is_dir():
        for folder in sorted(store.status_dir.iterdir()):
            record = read_record(store, folder.name)
            if record is not None:
                rows.append(record.to_dict())
    return pd.DataFrame(rows, columns=columns)
