"""Every tiling parameter in one typed, immutable object.

Defaults follow the paper (224-px tiles at 0.5 µm/px). The whole object is
written into each store, so a store always says how it was made, and a rerun
with different parameters into the same store is refused rather than mixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TissueConfig(_Frozen):
    """Classical tissue detection on a low-resolution view of the slide."""

    mask_mpp_um: float = Field(8.0, gt=0, description="µm/px of the view the mask is computed on")
    min_saturation: int = Field(20, ge=0, le=255, description="floor under the Otsu threshold on HSV saturation")
    max_value_black: int = Field(40, ge=0, le=255, description="HSV value under which a pixel is black, not tissue")
    suppress_pen: bool = Field(True, description="remove blue, green and black marker ink")
    closing_um: float = Field(32.0, ge=0, description="morphological closing radius, µm")
    min_component_area_um2: float = Field(20_000.0, ge=0, description="drop tissue pieces smaller than this")
    max_hole_area_um2: float = Field(10_000.0, ge=0, description="fill holes smaller than this inside tissue")
    # Pale IHC (a haematoxylin counterstain and little DAB) is grey, not saturated: saturation alone finds none
    # of CIMA's Cc10 section. Registration turns this on; tiling keeps saturation alone unless asked.
    min_od_above_glass: float | None = Field(
        None,
        gt=0,
        description="also count as tissue pixels whose optical density (summed over RGB) exceeds the "
        "glass's by this much; None: saturation alone",
    )


class TileQCConfig(_Frozen):
    """Per-tile filters applied to the pixels actually read."""

    min_tissue_fraction: float = Field(0.25, ge=0, le=1, description="share of the tile covered by the mask")
    max_white_fraction: float = Field(0.9, ge=0, le=1, description="reject tiles with more glass than this")
    white_level: int = Field(220, ge=0, le=255, description="all channels above this count as glass")
    max_black_fraction: float = Field(0.5, ge=0, le=1, description="reject tiles with more black than this")
    black_level: int = Field(30, ge=0, le=255, description="all channels below this count as black")
    # In-focus H&E at 0.5 µm/px measures 500-2,000; a 1 µm Gaussian blur brings it under 60.
    min_laplacian_variance: float = Field(50.0, ge=0, description="blur filter on grey levels; 0 disables it")


class TilingConfig(_Frozen):
    """How slides become tiles."""

    # Fields that change how a run works, not what it writes: a store records them, and a rerun may change them.
    RUN_ONLY: ClassVar[frozenset[str]] = frozenset({"threads", "checksum"})

    tile_size_px: int = Field(224, gt=0, description="tile edge in output pixels")
    target_mpp_um: float = Field(0.5, gt=0, description="requested µm per output pixel")
    mpp_tolerance: float = Field(
        0.05, ge=0, lt=1, description="use a level as-is when its mpp is within this relative distance"
    )
    allow_upsampling: bool = Field(False, description="upsample slides scanned coarser than the target")
    tissue: TissueConfig = TissueConfig()
    qc: TileQCConfig = TileQCConfig()
    jpeg_quality: int = Field(90, ge=1, le=100)
    jpeg_subsampling: Literal["444", "422", "420"] = Field("444", description="chroma subsampling of stored tiles")
    tiles_per_shard: int = Field(2048, gt=0, description="tiles per shard file in the store")
    read_block_tiles: int = Field(8, gt=0, description="tiles per side of one region read")
    threads: int = Field(2, gt=0, description="threads per slide for reading, resampling and encoding")
    checksum: bool = Field(True, description="record the SHA-256 of each source file")

    @classmethod
    def from_yaml(cls, path: Path | str) -> TilingConfig:
        """Load a config file; keys left out keep their defaults.

        Raises
        ------
        ValueError
            Naming the file, when it is not YAML or its values are not valid tiling parameters.
        """
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({error})") from error
        return cls.model_validate(data)

    def with_overrides(self, **overrides: object) -> TilingConfig:
        """Return a copy with top-level fields replaced (values that are ``None`` are ignored)."""
        updates = {key: value for key, value in overrides.items() if value is not None}
        return self.model_validate({**self.model_dump(), **updates})
