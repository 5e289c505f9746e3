"""Find a slide's pixel size (µm per level-0 pixel) in whatever metadata it carries.

Sources, in order of trust: the vendor field OpenSlide normalises
(``openslide.mpp-x``), OME ``PhysicalSizeX``, then TIFF resolution tags. A
resolution tag without a physical unit (``ResolutionUnit = NONE``) or with the
72-dpi placeholder that many writers put there is not a pixel size.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping

import tifffile

_MICRONS_PER_UNIT = {"centimeter": 1e4, "inch": 25_400.0, "millimeter": 1e3, "micrometer": 1.0}
_OME_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
_PLACEHOLDER_DPI = (72.0, 96.0, 300.0)


def _plausible(mpp: float | None) -> float | None:
    """Keep pixel sizes a microscope could produce (0.01–100 µm)."""
    if mpp is None or not math.isfinite(mpp) or not 0.01 <= mpp <= 100.0:
        return None
    return float(mpp)


def mpp_from_resolution(pixels_per_unit: float, unit: str) -> float | None:
    """Convert a TIFF resolution (pixels per ``unit``) into µm per pixel."""
    unit = unit.lower()
    if unit not in _MICRONS_PER_UNIT or pixels_per_unit <= 0:
        return None
    if unit == "inch" and pixels_per_unit in _PLACEHOLDER_DPI:
        return None
    return _plausible(_MICRONS_PER_UNIT[unit] / pixels_per_unit)


def mpp_from_openslide_properties(properties: Mapping[str, str]) -> float | None:
    """Read ``openslide.mpp-x``, falling back to the TIFF resolution tags OpenSlide exposes."""
    try:
        return _plausible(float(properties["openslide.mpp-x"]))
    except (KeyError, ValueError):
        pass
    try:
        return mpp_from_resolution(float(properties["tiff.XResolution"]), properties["tiff.ResolutionUnit"])
    except (KeyError, ValueError):
        return None


def mpp_from_ome_xml(ome_xml: str) -> float | None:
    """Read ``PhysicalSizeX`` of the first OME image, converted to µm."""
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            size = element.get("PhysicalSizeX")
            unit = element.get("PhysicalSizeXUnit", "µm")
            if size is None or unit not in _OME_UNIT_TO_UM:
                return None
            return _plausible(float(size) * _OME_UNIT_TO_UM[unit])
    return None


def mpp_from_tiff(tiff: tifffile.TiffFile) -> float | None:
    """Pixel size of a TIFF: OME metadata first, then the first page's resolution tags."""
    if tiff.is_ome and tiff.ome_metadata:
        mpp = mpp_from_ome_xml(tiff.ome_metadata)
        if mpp is not None:
            return mpp
    page = tiff.pages.first
    x_resolution = page.tags.get("XResolution")
    unit = page.tags.get("ResolutionUnit")
    if x_resolution is None or unit is None:
        return None
    numerator, denominator = x_resolution.value
    if denominator == 0:
        return None
    unit_name = tifffile.RESUNIT(unit.value).name.lower()
    return mpp_from_resolution(numerator / denominator, unit_name)
