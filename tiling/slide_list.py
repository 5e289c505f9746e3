"""Turn the user's slide list (a folder or a CSV) into validated slide specs.

Slide ids become folder names in the store, so they are checked before any
work starts: an id with a path separator, ``..``, control characters or
anything outside ``[A-Za-z0-9._-]`` is refused, and ids shared by several rows
are refused for every row, so no slide silently overwrites another. TCGA file
names (``TCGA-AA-3512-01Z-00-DX1.<uuid>.svs``) give their slide barcode as id.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

from tiling.errors import InvalidSlideIdError

SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm", ".qptiff",
)
_TCGA_BARCODE = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-\d{2}[A-Z]?-\d{2}-[A-Z]{2}\d+", re.IGNORECASE)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True)
class SlideSpec:
    """One slide to tile: file, id, and an optional pixel-size override in µm."""

    path: Path
    slide_id: str
    mpp_override_um: float | None = None


@dataclass(frozen=True)
class RejectedSlide:
    """A row of the slide list that cannot be tiled as given (``row`` counts from 1)."""

    row: int
    path: Path
    slide_id: str
    error: InvalidSlideIdError


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
    """
    slides, dicom_folders = [], set()
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or not path.name.lower().endswith(SLIDE_SUFFIXES):
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
            path, f"slide id {slide_id!r} is not allowed: use 1-200 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit, without '..'"
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


def list_slides(source: Path | str, mpp_override_um: float | None = None) -> tuple[list[SlideSpec], list[RejectedSlide]]:
    """Read a folder of slides or a CSV (columns ``path``, optional ``slide_id``, ``mpp``).

    Relative CSV paths are relative to the CSV's folder. A per-row ``mpp``
    wins over the global ``mpp_override_um``.

    Returns
    -------
    specs, rejected
        Slides to tile, and rows refused with the reason.

    Raises
    ------
    FileNotFoundError, ValueError
        If the source itself cannot be read: the run cannot happen.
    """
    source = Path(source)
    candidates: list[tuple[Path, str | None, str | None]] = []  # row order = position + 1
    if source.is_dir():
        candidates = [(path, None, None) for path in find_slide_files(source)]
    elif source.is_file():
        with source.open(newline="") as file:
            reader = csv.DictReader(file)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(f"{source}: the slide CSV needs a 'path' column, found {reader.fieldnames}")
            for row in reader:
                path = Path(row["path"].strip())
                candidates.append((path if path.is_absolute() else source.parent / path, row.get("slide_id"), row.get("mpp")))
    else:
        raise FileNotFoundError(f"slide source {source} is neither a folder nor a CSV file")

    specs, rejected = [], []
    resolved: list[tuple[int, Path, str, float | None]] = []
    for row, (path, given_id, mpp_text) in enumerate(candidates, start=1):
        slide_id = given_id.strip() if given_id and given_id.strip() else slide_id_from_path(path)
        try:
            validate_slide_id(slide_id, path)
            mpp = _parse_mpp(mpp_text, path)
        except InvalidSlideIdError as error:
            rejected.append(RejectedSlide(row, path, slide_id, error))
            continue
        resolved.append((row, path, slide_id, mpp if mpp is not None else mpp_override_um))

    rows_of_id: dict[str, list[int]] = {}
    for row, _, slide_id, _ in resolved:
        rows_of_id.setdefault(slide_id, []).append(row)
    for row, path, slide_id, mpp in resolved:
        clashing = rows_of_id[slide_id]
        if len(clashing) > 1:
            where = ", ".join(f"#{r} ({candidates[r - 1][0]})" for r in clashing)
            error = InvalidSlideIdError(path, f"slide id {slide_id!r} is shared by slides {where}; ids must be unique")
            rejected.append(RejectedSlide(row, path, slide_id, error))
        else:
            specs.append(SlideSpec(path=path, slide_id=slide_id, mpp_override_um=mpp))
    return specs, rejected
