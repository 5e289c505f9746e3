"""The embedding benchmarks' tile store: real H&E tissue tiles, stored as the tiling flow stores them.

Used by ``benchmarks/embedding.py`` and, through it, ``benchmarks/embedding_gpu.py``: 224-px crops of
``tests/data/slides/CMU-1-Small-Region.svs`` at its native 0.5 µm/px, kept when half their pixels are
stained, in their 8 flips and rotations, written by :class:`storage.slide_writer.SlideWriter` (JPEG q90
4:4:4). Not a script: the benchmarks load it by path (the folder is not a package).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"
TILE_PX = 224
CROP_STRIDE_PX = 112  # crops overlap by half: 175 tissue crops × 8 flips/rotations = 1,400 distinct tiles
STAIN_MIN_SATURATION = 20  # max - min channel: glass is ~0-10, eosin-stained stroma 30+
STAIN_MIN_FRACTION = 0.5


def tissue_tiles() -> np.ndarray:
    """Distinct 224-px H&E tiles ``[n, 224, 224, 3]`` uint8 from the CMU sample at 0.5 µm/px."""
    import openslide

    with openslide.OpenSlide(SAMPLE) as sample:
        rgb = np.asarray(sample.read_region((0, 0), 0, sample.dimensions).convert("RGB"))
    saturation = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
    crops = [
        rgb[y : y + TILE_PX, x : x + TILE_PX]
        for y in range(0, rgb.shape[0] - TILE_PX + 1, CROP_STRIDE_PX)
        for x in range(0, rgb.shape[1] - TILE_PX + 1, CROP_STRIDE_PX)
        if (saturation[y : y + TILE_PX, x : x + TILE_PX] > STAIN_MIN_SATURATION).mean() >= STAIN_MIN_FRACTION
    ]
    crops = np.stack(crops)
    turned = [np.rot90(crops, k, axes=(1, 2)) for k in range(4)]
    return np.ascontiguousarray(np.concatenate([*turned, *[t[:, :, ::-1] for t in turned]]))


def build_tile_store(root: Path, n_tiles: int, tiles_per_shard: int, tiles_per_slide: int) -> Path:
    """Write (once) a store of ``n_tiles`` tissue tiles, ``tiles_per_slide`` a slide, laid out as the tiler does."""
    from storage.slide_writer import SlideWriter
    from storage.tile_store import TileStore, software_version, utc_now

    parameters = {
        "benchmark": "tissue tiles of CMU-1-Small-Region.svs",
        "n_tiles": n_tiles,
        "tiles_per_shard": tiles_per_shard,
        "tiles_per_slide": tiles_per_slide,
        "tile_size_px": TILE_PX,
    }
    store = TileStore(root)
    n_slides = -(-n_tiles // tiles_per_slide)
    attributes = store.read_attributes()
    if attributes and attributes.get("tiling") == parameters and len(store.complete_slide_ids()) == n_slides:
        return root
    store = TileStore.create_or_open(root, parameters, overwrite=True)
    pool = tissue_tiles()
    grid_columns = 64  # fake but distinct level-0 coordinates, in 224-px steps at 0.5 µm/px = 448 level-0 px
    for slide in range(n_slides):
        first, count = slide * tiles_per_slide, min(tiles_per_slide, n_tiles - slide * tiles_per_slide)
        writer = SlideWriter(
            store,
            f"slide-{slide:03d}",
            capacity=count,
            tile_size_px=TILE_PX,
            tiles_per_shard=tiles_per_shard,
            jpeg_quality=90,
            jpeg_subsampling="444",
        )
        for start in range(0, count, tiles_per_shard):
            writer.append(pool[np.arange(first + start, first + min(count, start + tiles_per_shard)) % len(pool)])
        index = np.arange(count)
        coords = np.stack([index % grid_columns, index // grid_columns], axis=1).astype(np.int64) * 2 * TILE_PX
        writer.finish(
            coords,
            np.ones(count, np.float32),
            np.ones((8, 8), bool),
            8.0,
            {
                "slide_id": f"slide-{slide:03d}",
                "mpp_level0_um": 0.25,
                "software_version": software_version(),
                "created_at": utc_now(),
            },
        )
    return root


def first_tiles(store: Path, count: int) -> np.ndarray:
    """The store's first ``count`` tiles (fewer if it holds fewer), decoded: what the model-only row runs on."""
    from storage.tile_units import open_tile_source

    source = open_tile_source(store)
    parts, held = [], 0
    for unit in source.units():
        if held >= count:
            break
        parts.append(source.read(unit)[: count - held])
        held += len(parts[-1])
    return np.concatenate(parts)
