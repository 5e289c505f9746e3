"""Pixel sizes come from the right metadata, and levels are chosen by physical resolution."""

from __future__ import annotations

import pytest
import zarr

from storage.manifest import read_record
from storage.tile_store import TileStore
from tests.conftest import CMU_SVS, OME_TIFF, write_tiff
from tiling.config import TilingConfig
from tiling.errors import ResolutionTooLowError
from tiling.mpp import mpp_from_ome_xml, mpp_from_resolution
from tiling.resolution import plan_resolution
from tiling.slide import open_backend
from tiling.slide_list import SlideSpec
from tiling.tile_slide import tile_slide


def test_mpp_read_from_aperio_header_and_ome_xml():
    with_svs = open_backend(CMU_SVS)
    assert (with_svs.name, with_svs.mpp_um) == ("openslide+tiff-tiles", pytest.approx(0.499))
    with_ome = open_backend(OME_TIFF)  # OpenSlide rejects this OME-TIFF; tifffile reads it
    assert (with_ome.name, with_ome.mpp_um) == ("tifffile+tiff-tiles", pytest.approx(0.2270972430394695))
    assert with_ome.level_dimensions[0] == (1101, 1101)


def test_mpp_from_generic_tiff_resolution_tags(tmp_path, cmu_pixels):
    path = write_tiff(tmp_path / "res.tif", cmu_pixels[:600, :600], 0.25)
    assert open_backend(path).mpp_um == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (40000, "centimeter", 0.25),
        (101600, "inch", 0.25),
        (72, "inch", None),
        (1, "none", None),
        (0, "centimeter", None),
    ],
)
def test_resolution_tag_conversion(value, unit, expected):
    result = mpp_from_resolution(value, unit)
    assert result == (pytest.approx(expected) if expected else None)


def test_ome_physical_size_units():
    xml = (
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image>'
        '<Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm"/></Image></OME>'
    )
    assert mpp_from_ome_xml(xml) == pytest.approx(0.25)


def _plan(mpp0, downsamples, target=0.5, allow_upsampling=False):
    return plan_resolution(
        "slide.svs",
        mpp0,
        downsamples,
        target_mpp_um=target,
        tile_size_px=224,
        mpp_tolerance=0.05,
        allow_upsampling=allow_upsampling,
    )


def test_level_within_tolerance_is_read_as_is():
    plan = _plan(0.499, (1.0, 4.0))
    assert (plan.level, plan.tile_size_level, plan.needs_resize) == (0, 224, False)
    assert plan.effective_mpp_um == pytest.approx(0.499)
    assert plan.requested_mpp_um == 0.5


def test_40x_slide_with_4x_levels_is_downsampled_from_level_0():
    plan = _plan(0.2527, (1.0, 4.0, 16.0))
    assert plan.level == 0
    # 443.2 px exactly; rounded to an even 444 so JPEG tiles can be decoded at 1/2 scale
    assert (plan.tile_size_level, plan.decode_reduction) == (444, 2)
    assert plan.effective_mpp_um == pytest.approx(0.5, rel=3e-3)
    assert not plan.upsampled


def test_coarsest_finer_level_is_preferred():
    plan = _plan(0.1, (1.0, 2.0, 4.0, 8.0))  # 0.1, 0.2, 0.4, 0.8 µm/px
    assert (plan.level, plan.tile_size_level, plan.decode_reduction) == (2, 280, 1)


def test_coarse_slide_fails_unless_upsampling_allowed():
    with pytest.raises(ResolutionTooLowError, match="is 1 µm/px"):
        _plan(1.0, (1.0, 4.0))
    plan = _plan(1.0, (1.0, 4.0), allow_upsampling=True)
    assert plan.upsampled and plan.tile_size_level == 112


def test_mpp_override_never_replaces_a_recorded_pixel_size_and_replacing_is_explicit_and_logged(tmp_path):
    """The CMU SVS records 0.499 µm/px: an override of 0.25 must not change it; --mpp-replace must, loudly."""
    config = TilingConfig()
    store = TileStore.create_or_open(tmp_path / "tiles.zarr", config.model_dump())
    kept = tile_slide(SlideSpec(CMU_SVS, "kept", mpp_override_um=0.25), store, config)
    plain = tile_slide(SlideSpec(CMU_SVS, "plain"), store, config)
    replaced = tile_slide(SlideSpec(CMU_SVS, "replaced", mpp_replace_um=0.25), store, config)
    assert kept.n_tiles == plain.n_tiles == 50 and kept.message == ""
    kept_attributes = zarr.open_group(store.slide_path("kept"), mode="r").attrs
    assert kept_attributes["mpp_source"] == "file" and kept_attributes["mpp_level0_um"] == pytest.approx(0.499)
    assert replaced.n_tiles == 13  # each tile covers (0.5 / 0.25)² = 4× the level-0 pixels: about a quarter
    assert replaced.message == "pixel size replaced: the file records 0.499 µm/px, tiled as 0.25 µm/px"
    assert read_record(store, "replaced").extra["mpp_recorded_um"] == pytest.approx(0.499)
    attributes = zarr.open_group(store.slide_path("replaced"), mode="r").attrs
    assert attributes["mpp_source"] == "replacement" and attributes["mpp_level0_um"] == 0.25
    assert attributes["mpp_recorded_um"] == pytest.approx(0.499)
