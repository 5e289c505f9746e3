"""Write an image as a tiled JPEG TIFF pyramid that records its pixel size: a slide the tiler reads.

Synthetic studies, the benchmarks' generated slides and the tests' slides are
all written this way, so the resolution tags are written one way: libvips
stores ``xres``/``yres`` in pixels per millimetre with the unit ``cm`` in the
file's tag, and :mod:`tiling.mpp` reads them back as µm/px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyvips


def write_pyramid_tiff(
    path: Path,
    image: np.ndarray | pyvips.Image,
    mpp_um: float | None,
    *,
    jpeg_quality: int = 90,
    pyramid: bool = True,
) -> Path:
    """Write ``image`` (``[H, W, 3]`` uint8 or a libvips image) to ``path`` with 256-px JPEG tiles.

    ``mpp_um`` is written as the resolution; ``None`` leaves libvips' own
    resolution tags (what it writes for an image that has none, such as a
    JPEG; a slide that must record no unit at all is written with tifffile
    and ``resolutionunit="NONE"``). ``pyramid=False`` writes level 0 only.
    """
    if isinstance(image, np.ndarray):
        image = pyvips.Image.new_from_array(np.ascontiguousarray(image))
    image.tiffsave(
        str(path),
        tile=True,
        tile_width=256,
        tile_height=256,
        pyramid=pyramid,
        compression="jpeg",
        Q=jpeg_quality,
        **({} if mpp_um is None else {"xres": 1000.0 / mpp_um, "yres": 1000.0 / mpp_um, "resunit": "cm"}),
    )
    return path
