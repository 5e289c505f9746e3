"""Choose the pyramid level and resampling that turn a slide into tiles at a physical mpp.

A level whose pixel size is within tolerance of the target is used as-is, so
the common case (a 20× slide at ~0.5 µm/px) reads pixels without resampling.
Otherwise tiles are area-downsampled from the coarsest level finer than the
target. Each tile covers a whole number of level pixels, so every tile is one
integer-sized region resized to ``tile_size_px``; the effective mpp this gives
is recorded next to the requested one. Upsampling happens only when allowed,
and is recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from tiling.errors import ResolutionTooLowError


@dataclass(frozen=True)
class ResolutionPlan:
    """Where tiles are read from and how they are resampled.

    Attributes
    ----------
    level
        Pyramid level the pixels are read from.
    level_downsample
        Level-0 pixels per level pixel.
    level_mpp_um
        µm per pixel of that level.
    tile_size_level
        Tile edge in level pixels (an integer: the region read for one tile).
    tile_size_px
        Tile edge in output pixels.
    requested_mpp_um, effective_mpp_um
        The mpp asked for, and the one the tiles really have.
    upsampled
        True when output pixels are smaller than the level's pixels.
    """

    level: int
    level_downsample: float
    level_mpp_um: float
    tile_size_level: int
    tile_size_px: int
    requested_mpp_um: float
    effective_mpp_um: float
    upsampled: bool

    @property
    def tile_size_level0(self) -> float:
        """Tile edge in level-0 pixels."""
        return self.tile_size_level * self.level_downsample

    @property
    def needs_resize(self) -> bool:
        return self.tile_size_level != self.tile_size_px

    @property
    def decode_reduction(self) -> int:
        """The factor by which tile regions may be shrunk while decoding (see :func:`decode_reduction`)."""
        return decode_reduction(self.tile_size_level, self.tile_size_px)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "tile_size_level0": self.tile_size_level0}


def format_mpp(mpp_um: float) -> str:
    """A pixel size for people: rounded to 4 decimals (0.1 nm), trailing zeros dropped, with its unit.

    The one rule for every message, QC picture and summary; stores and
    manifests keep the exact value.
    """
    return f"{round(float(mpp_um), 4):g} µm/px"


def decode_reduction(tile_size_level: float, tile_size_px: int) -> int:
    """Largest of 8, 4, 2 that divides ``tile_size_level`` and leaves at least 95 % of ``tile_size_px``.

    A JPEG decoder can shrink by these factors for free while decoding; the
    final resize makes up a shortfall of up to 5 % (a 40× slide at 0.2527
    µm/px gives 444-px regions, 222 px at 1/2).
    """
    for factor in (8, 4, 2):
        if tile_size_level % factor == 0 and tile_size_level / factor >= 0.95 * tile_size_px:
            return factor
    return 1


def plan_resolution(
    slide_path: Path | str,
    mpp_level0_um: float,
    level_downsamples: tuple[float, ...],
    *,
    target_mpp_um: float,
    tile_size_px: int,
    mpp_tolerance: float,
    allow_upsampling: bool,
) -> ResolutionPlan:
    """Pick the level and tile footprint for ``target_mpp_um``.

    Raises
    ------
    ResolutionTooLowError
        If every level is coarser than the target (beyond tolerance) and
        ``allow_upsampling`` is false.
    """
    level_mpps = [mpp_level0_um * downsample for downsample in level_downsamples]

    def plan(level: int, tile_size_level: int) -> ResolutionPlan:
        level_mpp = level_mpps[level]
        return ResolutionPlan(
            level=level,
            level_downsample=level_downsamples[level],
            level_mpp_um=level_mpp,
            tile_size_level=tile_size_level,
            tile_size_px=tile_size_px,
            requested_mpp_um=target_mpp_um,
            effective_mpp_um=tile_size_level * level_mpp / tile_size_px,
            upsampled=tile_size_level < tile_size_px,
        )

    def footprint(level: int) -> int:
        """Tile edge in level pixels, a multiple of the decoder's shrink factor (changes mpp by < 0.5 %)."""
        exact = tile_size_px * target_mpp_um / level_mpps[level]
        step = max((f for f in (8, 4, 2) if exact / f >= 0.95 * tile_size_px), default=1)
        return max(1, step * round(exact / step))

    distances = [abs(mpp / target_mpp_um - 1.0) for mpp in level_mpps]
    closest = min(range(len(level_mpps)), key=distances.__getitem__)
    if distances[closest] <= mpp_tolerance:
        return plan(closest, tile_size_px)

    finer = [level for level, mpp in enumerate(level_mpps) if mpp < target_mpp_um]
    if finer:
        coarsest_finer = max(finer, key=level_mpps.__getitem__)
        return plan(coarsest_finer, footprint(coarsest_finer))

    finest = min(range(len(level_mpps)), key=level_mpps.__getitem__)
    if not allow_upsampling:
        raise ResolutionTooLowError(
            slide_path,
            f"finest level is {format_mpp(level_mpps[finest])}, coarser than the requested "
            f"{format_mpp(target_mpp_um)} (tolerance {mpp_tolerance:.0%}); pass allow_upsampling to upsample",
        )
    return plan(finest, footprint(finest))
