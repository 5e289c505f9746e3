"""Tiles in the store are the slide's pixels at the right place and resolution."""

from __future__ import annotations

import cv2
import numpy as np
import openslide
import pytest
import zarr

from storage.tile_store import TileStore
from tests.conftest import CMU_SVS, OME_TIFF
from tiling.config import TilingConfig
from tiling.slide_list import SlideSpec
from tiling.tile_slide import tile_slide


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def tile_into_store(tmp_path, path, slide_id, config=TilingConfig()) -> zarr.Group:
    store = TileStore.create_or_open(tmp_path / "tiles.zarr", config.model_dump())
    record = tile_slide(SlideSpec(path=path, slide_id=slide_id), store, config)
    assert record.status == "done", record.error
    return zarr.open_group(store.slide_path(slide_id), mode="r")


def direct_openslide_tile(path, x, y, size_level0, tile_px=224) -> np.ndarray:
    """An independent reference: one OpenSlide read of the tile's level-0 region, area-resized."""
    with openslide.OpenSlide(path) as slide:
        region = np.asarray(slide.read_region((int(x), int(y)), 0, (size_level0, size_level0)).convert("RGB"))
    if size_level0 != tile_px:
        region = cv2.resize(region, (tile_px, tile_px), interpolation=cv2.INTER_AREA)
    return region


def test_svs_tiles_equal_direct_reads_at_level0_coordinates(tmp_path):
    group = tile_into_store(tmp_path, CMU_SVS, "cmu")
    tiles, coords = group["tiles"][:], group["coords"][:]
    assert tiles.shape[1:] == (224, 224, 3) and tiles.dtype == np.uint8
    assert len(tiles) >= 30  # the sample is mostly tissue
    assert (coords % 224 == 0).all()  # 0.499 µm/px is within tolerance: level 0 as-is
    assert group.attrs["resolution"]["effective_mpp_um"] == pytest.approx(0.499)
    assert group.attrs["resolution"]["requested_mpp_um"] == 0.5
    for index in range(0, len(tiles), 7):
        x, y = coords[index]
        assert psnr(tiles[index], direct_openslide_tile(CMU_SVS, x, y, 224)) > 35


def test_025_pyramid_tiled_at_05_gives_112_um_tiles_from_level_1(tmp_path, slide_025):
    group = tile_into_store(tmp_path, slide_025, "p25")
    resolution = group.attrs["resolution"]
    assert resolution["level"] == 1
    assert resolution["effective_mpp_um"] == pytest.approx(0.5)
    assert resolution["tile_size_level0"] * 0.25 == pytest.approx(112.0)
    coords, tiles = group["coords"][:], group["tiles"][:]
    assert (coords % 448 == 0).all()
    with openslide.OpenSlide(slide_025) as slide:
        for index in range(0, len(tiles), 9):
            x, y = coords[index]
            direct = np.asarray(slide.read_region((int(x), int(y)), 1, (224, 224)).convert("RGB"))
            assert psnr(tiles[index], direct) > 35


def test_single_level_025_slide_is_area_downsampled_to_112_um_tiles(tmp_path, slide_025_single_level):
    group = tile_into_store(tmp_path, slide_025_single_level, "flat")
    resolution = group.attrs["resolution"]
    assert (resolution["level"], resolution["tile_size_level"]) == (0, 448)
    assert resolution["effective_mpp_um"] == pytest.approx(0.5)
    coords, tiles = group["coords"][:], group["tiles"][:]
    assert len(tiles) >= 30
    for index in range(0, len(tiles), 9):
        x, y = coords[index]
        assert psnr(tiles[index], direct_openslide_tile(slide_025_single_level, x, y, 448)) > 35


def test_ome_tiff_is_tiled_through_tifffile_with_non_integer_resampling(tmp_path):
    group = tile_into_store(tmp_path, OME_TIFF, "ome")
    resolution = group.attrs["resolution"]
    assert group.attrs["backend"] == "tifffile+tiff-tiles"
    assert resolution["tile_size_level"] == 494  # 493.2 exactly, made even for decoding at 1/2 scale
    assert resolution["effective_mpp_um"] == pytest.approx(0.5, rel=2e-3)
    assert group["tiles"].shape[0] == group["coords"].shape[0] > 0


def test_slide_metadata_records_provenance(tmp_path):
    group = tile_into_store(tmp_path, CMU_SVS, "cmu")
    attributes = dict(group.attrs)
    assert attributes["vendor"] == "aperio"
    assert attributes["source_size_bytes"] == CMU_SVS.stat().st_size
    assert len(attributes["source_sha256"]) == 64
    assert attributes["mpp_source"] == "file"
    assert attributes["tiling"]["tile_size_px"] == 224
    assert attributes["n_tiles"] == group["tiles"].shape[0]
    assert attributes["software_version"]
    fractions = group["tissue_fraction"][:]
    assert ((fractions >= 0.25) & (fractions <= 1.0)).all()
    assert group["tissue_mask"].attrs["mpp_um"] == 8.0


def test_coarse_slide_fails_clearly_or_is_upsampled_and_says_so(tmp_path, cmu_pixels):
    from tests.conftest import write_tiff

    coarse = write_tiff(tmp_path / "coarse.tif", cmu_pixels[::2, ::2].copy(), 1.0)
    store = TileStore.create_or_open(tmp_path / "tiles.zarr", TilingConfig().model_dump())
    refused = tile_slide(SlideSpec(coarse, "coarse"), store, TilingConfig())
    assert (refused.status, refused.error_type) == ("failed", "ResolutionTooLowError")
    config = TilingConfig(allow_upsampling=True)
    store = TileStore.create_or_open(tmp_path / "up.zarr", config.model_dump())
    record = tile_slide(SlideSpec(coarse, "coarse"), store, config)
    assert record.status == "done" and record.n_tiles > 0 and "upsampled" in record.message
    resolution = zarr.open_group(store.slide_path("coarse"), mode="r").attrs["resolution"]
    assert resolution["upsampled"] and resolution["tile_size_level"] == 112


def test_qc_picture_is_large_enough_to_judge_and_draws_tiles_where_they_are(tmp_path):
    group = tile_into_store(tmp_path, CMU_SVS, "cmu")
    picture = cv2.imread(str(tmp_path / "tiles.zarr" / "qc" / "cmu.png"))
    header = 106  # title, counts and legend above the slide
    assert picture.shape[0] - header == 1600 and picture.shape[1] >= 1024  # 2967 px long side shown at 1,600
    scale = 1600 / 2967  # picture px per level-0 px
    tile_colour = np.all(picture[header:] == (0, 200, 255), axis=2)  # BGR of the kept tiles' squares
    assert np.all(picture[header:] == (0, 170, 0), axis=2).sum() > 1000  # tissue outline, several px wide
    assert not np.all(picture[header:] == (0, 0, 220), axis=2).any()  # no tile was rejected on this slide
    for x, y in group["coords"][:]:  # each tile's top-left corner lies on a drawn square (±1 px of rounding)
        column, row = round(x * scale), round(y * scale)
        assert tile_colour[max(0, row - 1) : row + 3, max(0, column - 1) : column + 3].any(), (x, y)
