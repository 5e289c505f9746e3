"""Turn the user's slide list (a folder or a CSV) into validated slide specs.

Slide ids become folder and file names in the store, so they are checked
before any work starts, each row on its own: an id with a path separator,
``..``, control characters or anything outside ``[A-Za-z0-9._-]`` is refused;
so is an id that is one of the store's own names (``zarr.json``, its folders,
the keys of refused rows), whatever its case; and ids shared by several rows,
compared without case (a case-insensitive file system, as on macOS or an SMB
share, would make them one folder), are refused for every such row, so no
slide silently overwrites another. TCGA file names
(``TCGA-AA-3512-01Z-00-DX1.<uuid>.svs``) give their slide barcode as id.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

from storage.manifest import REJECTED_PREFIX
from tiling.errors import InvalidSlideIdError, SlideError, UnreadableSlideError

SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".qptiff",
)
_TCGA_BARCODE = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-\d{2}[A-Z]?-\d{2}-[A-Z]{2}\d+", re.IGNORECASE)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# Names a store gives its own files and folders at the levels where slide ids live (slides/, status/, qc/,
# staging/, done/ of tile, aligned and embedding stores), compared case-insensitively.
RESERVED_IDS = frozenset(
    {
        "zarr.json",
        "slides",
        "status",
        "qc",
        "staging",
        "done",
        "index",
        "embeddings",
        "tiles",
        "coords",
        "tissue_fraction",
        "tissue_mask",
        "grid",
        "run.lock",
    }
)


@dataclass(frozen=True)
class SlideSpec:
    """One slide to tile: file, id, and an optional pixel-size override in µm."""

    path: Path
    slide_id: str
    mpp_override_um: float | None = None  # used only when the file records no pixel size
    mpp_replace_um: float | None = None  # used instead of the file's pixel size, whatever it records


@dataclass(frozen=True)
class RejectedSlide:
    """A row of the slide list that cannot be tiled as given (``row`` counts from 1)."""

    row: int
    path: Path
    slide_id: str
    error: SlideError


def slide_id_from_path(path: Path) -> str:
    """TCGA barcode if the file name has one, else the file name without its slide suffixes.

    A DICOM file stands for its folder, whose name is the id.
    """
    match = _TCGA_BARCODE.search(path.name)
    if match:
        return match.group(0).upper()
    if path.suffix.lower() == ".dcm":
        return path.parent.name
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *SLIDE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_slide_files(folder: Path) -> list[Path]:
    """Slide files under ``folder``, recursively, sorted.

    A DICOM whole-slide image is a folder of ``.dcm`` files (one per level or
    frame group) that OpenSlide opens from any of them: each such folder
    counts once, through its first file, and is named after the folder.
    Broken symbolic links with a slide's name are listed too, so that the
    caller reports them instead of losing a slide without a word.
    """
    slides, dicom_folders = [], set()
    for path in sorted(folder.rglob("*")):
        broken_link = path.is_symlink() and not path.exists()
        if (
            not (path.is_file() or broken_link)
            or path.name.startswith(".")
            or not path.name.lower().endswith(SLIDE_SUFFIXES)
        ):
            continue
        if path.suffix.lower() == ".dcm":
            if path.parent in dicom_folders:
                continue
            dicom_folders.add(path.parent)
        slides.append(path)
    return slides


def validate_slide_id(slide_id: str, path: Path) -> None:
    """Raise :class:`InvalidSlideIdError` unless ``slide_id`` is a safe folder name."""
    if not _SAFE_ID.fullmatch(slide_id) or ".." in slide_id:
        raise InvalidSlideIdError(
            path,
            f"slide id {slide_id!r} is not allowed: use 1-200 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit, without '..'",
        )
    folded = slide_id.casefold()
    if folded in RESERVED_IDS or folded.startswith(REJECTED_PREFIX):
        raise InvalidSlideIdError(
            path,
            f"slide id {slide_id!r} is a name the store uses for itself; give the slide another id "
            "(a slide_id column in a CSV, or rename the file)",
        )


def _parse_mpp(value: str | None, path: Path) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        mpp = float(value)
    except ValueError:
        mpp = math.nan
    if not math.isfinite(mpp) or mpp <= 0:
        raise InvalidSlideIdError(path, f"mpp {value!r} in the slide list is not a positive number")
    return mpp


def _read_csv(source: Path) -> list[tuple[Path, str | None, str | None]]:
    """``(path, slide_id, mpp)`` of each row; a UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted."""
    with source.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{source}: the slide CSV needs a 'path' column, found {reader.fieldnames}")
        rows = []
        for row in reader:
            path = Path((row["path"] or "").strip())
            rows.append((path if path.is_absolute() else source.parent / path, row.get("slide_id"), row.get("mpp")))
    if not rows:
        raise ValueError(f"{source}: the slide CSV has a header but no rows; nothing to tile")
    return rows


def list_slides(
    source: Path | str, mpp_override_um: float | None = None, mpp_replace_um: float | None = None
) -> tuple[list[SlideSpec], list[RejectedSlide]]:
    """Read a folder of slides, a CSV (columns ``path``, optional ``slide_id``, ``mpp``), or one slide file.

    Relative CSV paths are relative to the CSV's folder. A per-row ``mpp``,
    like the global ``mpp_override_um``, is used only for slides whose files
    record no pixel size; the per-row value wins over the global one.
    ``mpp_replace_um`` replaces the pixel size of every slide, recorded or not.

    Returns
    -------
    specs, rejected
        Slides to tile, and rows refused with the reason.

    Raises
    ------
    FileNotFoundError, ValueError
        If the source itself cannot be read or lists no slide: the run cannot happen.
    """
    source = Path(source)
    candidates: list[tuple[Path, str | None, str | None]] = []  # row order = position + 1
    if source.is_dir():
        candidates = [(path, None, None) for path in find_slide_files(source)]
        if not candidates:
            raise ValueError(f"{source}: no slide files in this folder (looked for {', '.join(SLIDE_SUFFIXES)})")
    elif source.is_file() and source.name.lower().endswith(SLIDE_SUFFIXES):
        candidates = [(source, None, None)]  # one slide file, not a list
    elif source.is_file():
        candidates = _read_csv(source)
    else:
        raise FileNotFoundError(f"slide source {source} is neither a folder nor a CSV file")

    specs, rejected = [], []
    resolved: list[tuple[int, Path, str, float | None]] = []
    for row, (path, given_id, mpp_text) in enumerate(candidates, start=1):
        slide_id = given_id.strip() if given_id and given_id.strip() else slide_id_from_path(path)
        try:
            if path.is_symlink() and not path.exists():
                raise UnreadableSlideError(path, f"broken symbolic link (to {path.readlink()})")
            validate_slide_id(slide_id, path)
            mpp = _parse_mpp(mpp_text, path)
        except SlideError as error:
            rejected.append(RejectedSlide(row, path, slide_id, error))
            continue
        resolved.append((row, path, slide_id, mpp if mpp is not None else mpp_override_um))

    rows_of_id: dict[str, list[int]] = {}
    for row, _, slide_id, _ in resolved:
        rows_of_id.setdefault(slide_id.casefold(), []).append(row)
    for row, path, slide_id, mpp in resolved:
        clashing = rows_of_id[slide_id.casefold()]
        if len(clashing) > 1:
            where = ", ".join(f"#{r} ({candidates[r - 1][0]})" for r in clashing)
            clash = InvalidSlideIdError(
                path,
                f"slide id {slide_id!r} is shared by slides {where} (ids are compared without case); "
                "ids must be unique",
            )
            rejected.append(RejectedSlide(row, path, slide_id, clash))
        else:
            specs.append(SlideSpec(path=path, slide_id=slide_id, mpp_override_um=mpp, mpp_replace_um=mpp_replace_um))
    return specs, rejected
