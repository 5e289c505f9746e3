"""Open whole-slide images through one small interface, whatever the format.

Metadata (levels, pixel size, vendor) comes from OpenSlide for every format it
reads (SVS, NDPI, MRXS, SCN, DICOM, generic tiled TIFF), else from tifffile
(OME-TIFF exports, untiled TIFFs). Pixels come from the fastest path that
gives the same values: the TIFF's own tiles decoded directly when the file is
a tiled TIFF pyramid (see :mod:`tiling.tiff_tiles`), else OpenSlide, else
tifffile's zarr view. Every reader answers in pixels of the level asked for
and returns RGB ``uint8``; pixels outside the scanned area are white.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import openslide
import tifffile
import zarr

from tiling.errors import SlideReadError, UnreadableSlideError
from tiling.mpp import mpp_from_openslide_properties, mpp_from_tiff
from tiling.tiff_tiles import Rect, TiffTileSource


class SlideBackend(Protocol):
    """What the tiler needs from a slide format library."""

    name: str
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]  # level-0 px per level px, see pyramid_downsamples
    mpp_um: float | None  # level-0 µm per pixel recorded in the file, if any

    def read_regions(self, level: int, rects: Sequence[Rect], reduce: int = 1) -> list[np.ndarray]:
        """Return ``[h, w, 3]`` uint8 RGB for each ``(x, y, w, h)`` rect, in pixels of ``level``.

        ``reduce`` (2, 4, 8) allows the backend to return each region shrunk
        by that factor when it can do so cheaply while decoding; callers that
        pass it resize whatever size comes back.
        """
        ...

    def close(self) -> None: ...


def pyramid_downsamples(level_dimensions: Sequence[tuple[int, int]]) -> tuple[float, ...]:
    """Level-0 pixels per level pixel, as the pyramid was built.

    Pyramids are made by shrinking level 0 by a whole factor and rounding the
    size, so the size ratio is not the scale: 2167 → 541 px is a 4× level,
    not 4.0035× (the ratio OpenSlide reports). Using the ratio would drift
    level-0 coordinates by up to 0.1 % of the position. A level whose sizes
    are the floor or ceiling of level 0 divided by a whole number gets that
    number; any other keeps its size ratio.
    """
    width0, height0 = level_dimensions[0]
    downsamples = []
    for width, height in level_dimensions:
        factor = round(width0 / width)
        exact = factor >= 1 and abs(width0 / factor - width) < 1 and abs(height0 / factor - height) < 1
        downsamples.append(float(factor) if exact else width0 / width)
    return tuple(downsamples)


def read_region(backend: SlideBackend, level: int, rect: Rect) -> np.ndarray:
    """One region of ``level``; see :meth:`SlideBackend.read_regions`."""
    return backend.read_regions(level, [rect])[0]


def _regions_from_bounding_box(read_box: Callable[[Rect], np.ndarray], rects: Sequence[Rect]) -> list[np.ndarray]:
    """Serve several rects with one read of their bounding box: one library call instead of many."""
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    x1, y1 = max(r[0] + r[2] for r in rects), max(r[1] + r[3] for r in rects)
    box = read_box((x0, y0, x1 - x0, y1 - y0))
    return [box[y - y0 : y - y0 + h, x - x0 : x - x0 + w] for x, y, w, h in rects]


def _tile_source(tiff: tifffile.TiffFile | None, level_dimensions) -> TiffTileSource | None:
    return TiffTileSource.for_levels(tiff, level_dimensions) if tiff is not None else None


def _read_tiles(path: Path, tiles: TiffTileSource, level: int, rects: Sequence[Rect], reduce: int) -> list[np.ndarray]:
    reduce = reduce if tiles.can_reduce(level) else 1
    return _decode_or_fail(path, lambda: tiles.read_regions(level, rects, reduce))


class OpenSlideBackend:
    """OpenSlide metadata; pixels from the TIFF tiles directly when the file allows it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._slide = openslide.OpenSlide(path)
        self.vendor = self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = pyramid_downsamples(self.level_dimensions)
        # OpenSlide converts read locations with its own (size-ratio) downsamples.
        self._openslide_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp_um = mpp_from_openslide_properties(self._slide.properties)
        self._tiff, self._tiles = None, None
        with contextlib.suppress(Exception):  # not a TIFF, or one tifffile cannot map: OpenSlide reads pixels
            self._tiff = tifffile.TiffFile(path)
            self._tiles = _tile_source(self._tiff, self.level_dimensions)
        if self._tiles is None and self._tiff is not None:
            self._tiff.close()
        self.name = "openslide+tiff-tiles" if self._tiles else "openslide"

    def _read_box(self, level: int, rect: Rect) -> np.ndarray:
        x, y, width, height = rect
        downsample = self._openslide_downsamples[level]
        try:
            image = self._slide.read_region((round(x * downsample), round(y * downsample)), level, (width, height))
        except openslide.OpenSlideError as error:
            raise SlideReadError(self._path, f"OpenSlide could not decode pixels: {error}") from error
        rgba = np.asarray(image)
        rgb = rgba[..., :3].copy()
        # OpenSlide returns premultiplied alpha: fully transparent means "not scanned", show it as glass.
        rgb[rgba[..., 3] == 0] = 255
        return rgb

    def read_regions(self, level: int, rects: Sequence[Rect], reduce: int = 1) -> list[np.ndarray]:
        if self._tiles is not None:
            return _read_tiles(self._path, self._tiles, level, rects, reduce)
        return _regions_from_bounding_box(lambda box: self._read_box(level, box), rects)

    def close(self) -> None:
        self._slide.close()
        if self._tiles is not None:
            self._tiles.close()
        if self._tiff is not None:
            self._tiff.close()


class TiffBackend:
    """tifffile reader for TIFFs OpenSlide rejects, such as OME-TIFF exports."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._tiff = tifffile.TiffFile(path)
        series = self._tiff.series[0]
        if series.dtype != np.uint8 or series.shape[-1] not in (3, 4) or len(series.shape) != 3:
            shape, dtype = series.shape, series.dtype
            self._tiff.close()
            raise UnreadableSlideError(path, f"TIFF holds {shape} {dtype}, not an RGB uint8 image")
        self._levels = [zarr.open_array(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
        self.vendor = "ome-tiff" if self._tiff.is_ome else "tiff"
        self.level_dimensions = tuple((int(a.shape[1]), int(a.shape[0])) for a in self._levels)
        self.level_downsamples = pyramid_downsamples(self.level_dimensions)
        self.mpp_um = mpp_from_tiff(self._tiff)
        self._tiles = _tile_source(self._tiff, self.level_dimensions)
        self.name = "tifffile+tiff-tiles" if self._tiles else "tifffile"
        # The zarr view shares one file handle: reads through it must not interleave.
        self._lock = threading.Lock()

    def _read_box(self, level: int, rect: Rect) -> np.ndarray:
        x, y, width, height = rect
        level_width, level_height = self.level_dimensions[level]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, level_width), min(y + height, level_height)
        if x1 > x0 and y1 > y0:
            with self._lock:
                pixels = self._levels[level][y0:y1, x0:x1, :3]
            out[y0 - y : y1 - y, x0 - x : x1 - x] = pixels
        return out

    def read_regions(self, level: int, rects: Sequence[Rect], reduce: int = 1) -> list[np.ndarray]:
        if self._tiles is not None:
            return _read_tiles(self._path, self._tiles, level, rects, reduce)
        return _decode_or_fail(
            self._path, lambda: _regions_from_bounding_box(lambda b: self._read_box(level, b), rects)
        )

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._tiff.close()


def _decode_or_fail(path: Path, read: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
    """Turn codec errors from a corrupt or truncated file into a :class:`SlideReadError`.

    ``OSError`` (an unreachable file server, say) passes through unchanged: it
    may be transient, and the run retries it.
    """
    try:
        return read()
    except (SlideReadError, OSError):
        raise
    except Exception as error:  # imagecodecs, tifffile and zarr each raise their own types
        raise SlideReadError(path, f"could not decode pixels: {type(error).__name__}: {error}") from error


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
            reasons.append(f"{backend.__name__}: {type(error).__name__}: {error}".strip())
    raise UnreadableSlideError(path, "not a readable slide (" + "; ".join(reasons) + ")")


@contextlib.contextmanager
def opened_slide(path: Path | str) -> Iterator[SlideBackend]:
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
