"""Open whole-slide images through one small interface, whatever the format.

OpenSlide reads the vendor formats (SVS, NDPI, MRXS, SCN, DICOM, generic tiled
TIFF). Files it rejects but that are TIFFs (OME-TIFF, untiled or single-level
TIFFs) are read with tifffile, whose zarr view decodes only the tiles a region
touches. Every reader answers in the same frame: level-0 pixel coordinates in,
RGB ``uint8`` arrays out.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import openslide
import tifffile
import zarr

from tiling.errors import SlideReadError, UnreadableSlideError
from tiling.mpp import mpp_from_openslide_properties, mpp_from_tiff


class SlideBackend(Protocol):
    """What the tiler needs from a slide format library."""

    name: str
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]
    mpp_um: float | None  # level-0 µm per pixel recorded in the file, if any

    def read_region(self, x_level0: int, y_level0: int, level: int, width: int, height: int) -> np.ndarray:
        """Return ``[height, width, 3]`` uint8 RGB pixels of ``level`` starting at a level-0 point."""
        ...

    def close(self) -> None: ...


class OpenSlideBackend:
    """OpenSlide reader; transparent pixels (outside scanned areas) become white."""

    name = "openslide"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._slide = openslide.OpenSlide(path)
        self.vendor = self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp_um = mpp_from_openslide_properties(self._slide.properties)

    def read_region(self, x_level0: int, y_level0: int, level: int, width: int, height: int) -> np.ndarray:
        try:
            rgba = np.asarray(self._slide.read_region((x_level0, y_level0), level, (width, height)))
        except openslide.OpenSlideError as error:
            raise SlideReadError(self._path, f"OpenSlide could not decode pixels: {error}") from error
        rgb = rgba[..., :3].copy()
        # OpenSlide returns premultiplied alpha: fully transparent means "not scanned", show it as glass.
        rgb[rgba[..., 3] == 0] = 255
        return rgb

    def close(self) -> None:
        self._slide.close()


class TiffBackend:
    """tifffile reader for TIFFs OpenSlide rejects, such as OME-TIFF exports."""

    name = "tifffile"

    def __init__(self, path: Path) -> None:
        self._tiff = tifffile.TiffFile(path)
        series = self._tiff.series[0]
        if series.dtype != np.uint8 or series.shape[-1] not in (3, 4) or len(series.shape) != 3:
            shape, dtype = series.shape, series.dtype
            self._tiff.close()
            raise UnreadableSlideError(path, f"TIFF holds {shape} {dtype}, not an RGB uint8 image")
        self._path = path
        self._levels = [zarr.open_array(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
        self.vendor = "ome-tiff" if self._tiff.is_ome else "tiff"
        self.level_dimensions = tuple((int(a.shape[1]), int(a.shape[0])) for a in self._levels)
        width0 = self.level_dimensions[0][0]
        self.level_downsamples = tuple(width0 / w for w, _ in self.level_dimensions)
        self.mpp_um = mpp_from_tiff(self._tiff)
        # tifffile file handles are not safe for concurrent reads.
        self._lock = threading.Lock()

    def read_region(self, x_level0: int, y_level0: int, level: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        x, y = int(round(x_level0 / downsample)), int(round(y_level0 / downsample))
        level_width, level_height = self.level_dimensions[level]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, level_width), min(y + height, level_height)
        if x1 > x0 and y1 > y0:
            try:
                with self._lock:
                    pixels = self._levels[level][y0:y1, x0:x1, :3]
            except Exception as error:  # tifffile raises codec-specific types for corrupt tiles
                raise SlideReadError(self._path, f"tifffile could not decode pixels: {error}") from error
            out[y0 - y : y1 - y, x0 - x : x1 - x] = pixels
        return out

    def close(self) -> None:
        self._tiff.close()


def open_backend(path: Path | str) -> SlideBackend:
    """Open ``path`` with the first backend that accepts it.

    Raises
    ------
    UnreadableSlideError
        With every backend's reason, when none can open the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableSlideError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise UnreadableSlideError(path, "file is empty (0 bytes)")
    reasons = []
    for backend in (OpenSlideBackend, TiffBackend):
        try:
            return backend(path)
        except UnreadableSlideError:
            raise
        except Exception as error:  # each library has its own exception zoo
            reasons.append(f"{backend.name}: {type(error).__name__}: {error}".strip())
    raise UnreadableSlideError(path, "not a readable slide (" + "; ".join(reasons) + ")")


@contextlib.contextmanager
def opened_slide(path: Path | str):
    """Context manager around :func:`open_backend` that always closes the file."""
    backend = open_backend(path)
    try:
        yield backend
    finally:
        backend.close()


def header_attributes(backend: SlideBackend) -> dict[str, object]:
    """The header facts of an open slide, as recorded in the store."""
    return {
        "backend": backend.name,
        "vendor": backend.vendor,
        "level_dimensions": [list(size) for size in backend.level_dimensions],
        "level_downsamples": list(backend.level_downsamples),
    }
