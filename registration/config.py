"""Every registration and refinement parameter, in typed, immutable objects.

The elastix optimisation settings themselves live in the readable parameter
files under ``registration/parameters/``; :class:`RegistrationConfig` holds
what changes from one study to the next: the resolution of the views, the
stages, the B-spline grid and the plausibility thresholds.
:class:`RefinementConfig` holds those of the local refinement near the tiles
(:mod:`registration.refine`). Both are here, free of OpenCV and elastix, so
that a job's config is validated without importing either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["rigid", "affine", "bspline"]

# How a PLISM-style study names its slides, and its reference condition (registration.layout; the paper's GMH on
# the Hamamatsu S60). Here, beside the other defaults, so that a job's config is read without opening slides.
DEFAULT_PATTERN = r"(?P<staining>[A-Za-z0-9]+)_(?P<scanner>[A-Za-z0-9]+)"
DEFAULT_REFERENCE = ("GMH", "S60")


class RegistrationConfig(BaseModel):
    """How a moving slide is aligned to a fixed slide."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A 10 mm slide pair (benchmarks/registration_whole_slide.py): 8 µm/px registers in 15 s to 1.2 µm at the tiles,
    # 4 µm/px in 18 s to 1.1 µm, 2 µm/px in 29 s to 0.35 µm, closer than per-tile refinement gets in 3 minutes.
    view_mpp_um: float = Field(2.0, gt=0, description="µm/px of the low-resolution views that are registered")
    channel: Literal["od", "haematoxylin"] = Field(
        "od", description="stain-robust intensity: optical density summed over RGB, or haematoxylin by deconvolution"
    )
    stages: tuple[Stage, ...] = Field(
        ("rigid", "affine", "bspline"), min_length=1, description="elastix stages, in order"
    )
    bspline_grid_spacing_um: float = Field(250.0, gt=0, description="final B-spline control-point spacing, µm")
    rotation_step_deg: float = Field(
        5.0, gt=0, le=90, description="step of the coarse rotation search that initialises the rigid stage"
    )
    initial_mpp_um: float = Field(32.0, gt=0, description="µm/px of the coarse views of the rotation search")
    mask_dilation_um: float = Field(80.0, ge=0, description="margin of glass kept around tissue in the metric mask")
    min_tissue_od: float = Field(
        0.05,
        gt=0,
        description="pixels whose optical density (summed over RGB) exceeds the glass's by this much "
        "count as tissue even when grey (pale IHC); see tiling.tissue.detect_tissue",
    )
    fallbacks: bool = Field(
        True,
        description="when the checks refuse a result, register again with the other channel, then on views "
        "twice as coarse, before refusing the pair",
    )
    check_max_pixels: int = Field(
        4_000_000,
        gt=0,
        description="quality figures, refusals and the QC picture use the fixed view area-shrunk "
        "to at most this many pixels: a fine view registers more exactly, the checks need not be as fine",
    )
    min_tissue_dice: float = Field(
        0.6, ge=0, le=1, description="refuse a result whose tissue masks overlap less than this after registration"
    )
    # A mirrored copy of the CMU sample reached Dice 0.87 but NCC 0.16-0.20; a warped, recoloured copy Dice 0.98
    # and NCC 0.96. Not yet calibrated on real serial sections or across stains.
    min_ncc: float = Field(
        0.3, ge=-1, le=1, description="refuse a result whose stain intensities correlate less than this afterwards"
    )
    number_of_threads: int | None = Field(None, gt=0, description="elastix threads (none: every core)")
    # As in tiling (--mpp-override / --mpp-replace): a stated pixel size fills in a missing one and never
    # silently replaces what the file records; replacing it takes the *_replace_um field.
    fixed_mpp_um: float | None = Field(
        None, gt=0, description="level-0 µm/px of the fixed slide, used only when its file records none"
    )
    moving_mpp_um: float | None = Field(
        None, gt=0, description="level-0 µm/px of the moving slide, used only when its file records none"
    )
    fixed_mpp_replace_um: float | None = Field(
        None, gt=0, description="level-0 µm/px of the fixed slide, replacing whatever its file records"
    )
    moving_mpp_replace_um: float | None = Field(
        None, gt=0, description="level-0 µm/px of the moving slide, replacing whatever its file records"
    )

    @classmethod
    def from_yaml(cls, path: Path | str) -> RegistrationConfig:
        """Load a config file; keys left out keep their defaults."""
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})


class RefinementConfig(BaseModel):
    """How a global registration is refined around tile locations."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    anchor_spacing_um: float = Field(400.0, gt=0, description="one anchor per square cell of this side, µm")
    patch_size_um: float = Field(256.0, gt=0, description="side of the square patch registered at each anchor, µm")
    patch_mpp_um: float = Field(1.0, gt=0, description="µm/px of the patches")
    transform: Literal["phase", "translation", "affine"] = Field(
        "phase",
        description="how a patch's shift is found: phase correlation, or an elastix translation or affine "
        "fit (its shift at the anchor)",
    )
    channel: Literal["od", "haematoxylin"] = Field("od", description="stain intensity the patches are registered on")
    max_shift_um: float = Field(20.0, gt=0, description="reject an anchor whose correction is longer than this, µm")
    min_ncc: float = Field(0.4, ge=-1, le=1, description="reject an anchor whose patches correlate less afterwards")
    min_tissue_fraction: float = Field(
        0.25, ge=0, le=1, description="reject an anchor whose fixed or moving patch has less tissue (non-glass)"
    )
    interpolation_sigma_um: float = Field(
        200.0, gt=0, description="Gaussian width with which anchor corrections spread to other points, µm"
    )
    fallback_distance_um: float = Field(
        1000.0, gt=0, description="at about this distance from every accepted anchor the correction fades to zero"
    )
    glass_level: int = Field(215, ge=0, le=255, description="a pixel with every RGB channel above this is glass")
    number_of_threads: int | None = Field(None, gt=0, description="elastix threads per anchor (elastix transforms)")
