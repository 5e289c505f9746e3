"""The slides ``benchmarks/tiling.py`` tiles: a 40×-like tiled JPEG TIFF built from the CMU sample's tissue.

The sample's tissue is upscaled 2× to 0.25 µm/px, mirrored and repeated to the requested size, and
written with levels 4× apart like a 40× Aperio SVS (levels 2× apart would hold a 0.5 µm/px level
that needs no resampling, which TCGA slides lack). A run tiles a folder of hard links to it.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import openslide
import tifffile

if TYPE_CHECKING:
    import pyvips

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"
LEVEL0_MPP_UM = 0.25
LEVEL_STEP = 4  # downsample between pyramid levels, as in Aperio SVS
TISSUE_ORIGIN = (0.55, 0.6)  # where in the sample the mosaic starts: inside the tissue, for small slides
TISSUE_COLUMNS = (0.40, 0.85)  # the sample's tissue band; the glass on either side is left out of the mosaic
SOURCE_TILE_PX = 256
SOURCE_JPEG_QUALITY = 85


def _tissue_levels(size: int) -> list[pyvips.Image]:
    """The sample's tissue at 0.25 µm/px, mirrored 2×2 and repeated to ``size`` px, per pyramid level.

    Each level repeats a shrunk copy of the 2×2 block rather than shrinking the
    full mosaic, which pyvips would recompute for every strip written.
    """
    import pyvips  # only needed to build slides; keeps the measuring child processes lean

    with openslide.OpenSlide(SAMPLE) as sample:
        width, height = sample.dimensions
        rgb = np.asarray(sample.read_region((0, 0), 0, (width, height)).convert("RGB"))
    left, right = (round(f * width) for f in TISSUE_COLUMNS)
    rgb = rgb[:, left:right]
    rgb = rgb[: rgb.shape[0] // 32 * 32, : rgb.shape[1] // 32 * 32]  # so the block shrinks by 4³ exactly
    tissue = pyvips.Image.new_from_array(rgb).resize(2)
    block = pyvips.Image.arrayjoin([tissue, tissue.fliphor(), tissue.flipver(), tissue.rot180()], across=2)
    block = block.copy_memory()
    shrinks, edge = 0, size
    while edge > 1024:
        edge, shrinks = edge // LEVEL_STEP, shrinks + 1
    # Every level's crop starts at level 0's origin divided by its downsample, exactly: rounding the origin per
    # level put level 1 one level-0 px off in x and y, which registration benchmarks read as a 0.35 µm error.
    step = LEVEL_STEP**shrinks
    x0, y0 = (round(f * extent / 2 / step) * step for f, extent in zip(TISSUE_ORIGIN, (block.width, block.height)))
    levels, edge = [], size
    while True:
        copies = (math.ceil((x0 + edge) / block.width), math.ceil((y0 + edge) / block.height))
        levels.append(block.replicate(*copies).crop(x0, y0, edge, edge))
        if edge <= 1024:
            return levels
        edge, x0, y0 = edge // LEVEL_STEP, x0 // LEVEL_STEP, y0 // LEVEL_STEP
        block = block.shrink(LEVEL_STEP, LEVEL_STEP).copy_memory()


def _tiles_of(image: pyvips.Image) -> Iterator[np.ndarray]:
    """Yield ``image``'s 256-px tiles in TIFF order, rendering one strip of rows at a time."""
    for y in range(0, image.height, SOURCE_TILE_PX):
        strip = image.crop(0, y, image.width, min(SOURCE_TILE_PX, image.height - y)).numpy()
        for x in range(0, image.width, SOURCE_TILE_PX):
            yield strip[:, x : x + SOURCE_TILE_PX]


def build_slide(path: Path, size: int) -> Path:
    """Write (once) a ``size``² px tiled JPEG TIFF at 0.25 µm/px, YCbCr 4:2:0 like scanner output."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with tifffile.TiffWriter(partial) as tiff:
        for index, level in enumerate(_tissue_levels(size)):
            pixels_per_cm = 1e4 / (LEVEL0_MPP_UM * LEVEL_STEP**index)
            tiff.write(
                _tiles_of(level),
                shape=(level.height, level.width, 3),
                dtype=np.uint8,
                tile=(SOURCE_TILE_PX, SOURCE_TILE_PX),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": SOURCE_JPEG_QUALITY},
                resolution=(pixels_per_cm, pixels_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=int(index > 0),
                metadata=None,
            )
    with openslide.OpenSlide(partial) as slide:
        mpp = float(slide.properties.get("openslide.mpp-x", "nan"))
    if not math.isclose(mpp, LEVEL0_MPP_UM, rel_tol=1e-3):
        raise RuntimeError(f"{partial}: OpenSlide reads {mpp} µm/px, expected {LEVEL0_MPP_UM}")
    partial.rename(path)
    return path


def link_copies(slide: Path, folder: Path, count: int) -> Path:
    """A folder of ``count`` hard links to ``slide``, each its own slide id."""
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for index in range(count):
        os.link(slide, folder / f"slide-{index:04d}.tif")
    return folder
