"""Register a moving slide to a fixed slide: the one call analysts and flows make.

Both slides are rendered at ``view_mpp_um`` in µm, so slides scanned at
different mpp register directly. A coarse rotation search initialises
elastix, which then runs the configured stages (rigid → affine → B-spline by
default). The result is refused, with a QC picture, when a slide shows no
tissue, when elastix fails, or when the tissue masks or stains still agree too little.

Stains differ in what they show, so a pair the checks refuse is registered
again before it is refused: with the other intensity channel (optical
density summed over RGB, which any stain has, or haematoxylin, which H&E and
IHC counterstains share), then on views twice as coarse (where the shapes
of the tissue, not single cells, lead). Only when every attempt fails is
the pair refused, with each attempt's reason and what the user can change.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from registration.config import RegistrationConfig
from registration.elastix import deformation_um, itk_image, run_elastix, stage_map
from registration.errors import RegistrationError
from registration.geometry import pixel_centres_um, resize_view, sample_view
from registration.initial import initial_transform_map
from registration.qc import render_registration_qc
from registration.quality import RegistrationQuality, measure_quality
from registration.result import RegistrationResult
from registration.views import SlideView, dilate_px, render_view


def _moving_on_fixed_grid(fixed: SlideView, moving: SlideView, moving_um: np.ndarray):
    """Moving (rgb, intensity, mask) sampled at ``[H * W, 2]`` moving µm, one per fixed view pixel."""
    shape = fixed.intensity.shape
    rgb = sample_view(moving.rgb, moving.spacing_um, moving_um, shape, fill=255)
    intensity = sample_view(moving.intensity, moving.spacing_um, moving_um, shape)
    mask = sample_view(moving.tissue_mask.astype(np.float32), moving.spacing_um, moving_um, shape) > 0.5
    return rgb, intensity, mask


def _metric_mask(view: SlideView, dilation_um: float) -> np.ndarray:
    """uint8 mask of tissue plus a margin of glass, where elastix samples its metric."""
    return dilate_px(view.tissue_mask, dilation_um / min(view.spacing_um)).astype(np.uint8)


def _check_mpp_um(view: SlideView, max_pixels: int) -> float:
    """µm/px at which ``view`` has at most ``max_pixels`` pixels (its own spacing if it already has)."""
    return min(view.spacing_um) * max(1.0, (view.intensity.size / max_pixels) ** 0.5)


def _coarsened(view: SlideView, mpp_um: float) -> SlideView:
    """``view`` area-resampled to ``mpp_um`` when that is coarser, for checks that need no finer grid."""
    if min(view.spacing_um) >= mpp_um * 0.999:
        return view
    rgb, spacing = resize_view(view.rgb, view.spacing_um, mpp_um)
    intensity, _ = resize_view(view.intensity, view.spacing_um, mpp_um)
    mask = resize_view(view.tissue_mask.astype(np.float32), view.spacing_um, mpp_um)[0] > 0.5
    return SlideView(view.path, rgb, intensity, mask, spacing, view.mpp_level0_um, view.dimensions_level0)


def _implausible(quality: RegistrationQuality, config: RegistrationConfig) -> str | None:
    """Why a finished registration cannot be right (unrelated or mirrored slides), or ``None``."""
    if quality.dice_after < config.min_tissue_dice:
        return f"tissue Dice {quality.dice_after:.2f} after registration is under {config.min_tissue_dice}"
    if quality.ncc_after < config.min_ncc:
        return f"stain NCC {quality.ncc_after:.2f} after registration is under {config.min_ncc}"
    return None


def _fail(fixed: SlideView, moving: SlideView, reason: str, panels: list, qc_path: Path | None) -> RegistrationError:
    qc_png = render_registration_qc(fixed.rgb, fixed.tissue_mask, panels)
    if qc_path is not None:
        qc_path.write_bytes(qc_png)
    return RegistrationError(fixed.path, moving.path, reason, qc_png)


def _attempts(config: RegistrationConfig) -> list[RegistrationConfig]:
    """The configured registration, then the fallbacks tried when its result is refused."""
    if not config.fallbacks:
        return [config]
    other = "haematoxylin" if config.channel == "od" else "od"
    return [
        config,
        config.model_copy(update={"channel": other}),
        config.model_copy(update={"view_mpp_um": 2 * config.view_mpp_um}),
    ]


def _label(config: RegistrationConfig) -> str:
    return f"channel {config.channel}, view {config.view_mpp_um:g} um/px"


_ADVICE = (
    "If both slides do show the same tissue, look at the QC picture; then lower min_ncc (stain NCC across "
    "different stains is typically 0.15-0.3) or min_tissue_dice, or set view_mpp_um, mask_dilation_um, "
    "fixed_mpp_um / moving_mpp_um (a missing pixel size) or fixed_mpp_replace_um / moving_mpp_replace_um (a wrong one)"
)


class _Refused(Exception):
    """One attempt's result failed the checks: the reason and the QC panels that show it."""

    def __init__(self, reason: str, panels: list, fixed_check: SlideView, moving: SlideView) -> None:
        super().__init__(reason)
        self.reason, self.panels, self.fixed_check, self.moving = reason, panels, fixed_check, moving


def _register_once(
    fixed_path: Path | str, moving_path: Path | str, config: RegistrationConfig, qc_path: Path | None
) -> RegistrationResult:
    """One registration with ``config``; raises :class:`_Refused` when the checks refuse its result."""
    # The two views are read at once: region reads (OpenSlide, JPEG decoding) and OpenCV release the GIL.
    with ThreadPoolExecutor(2) as pool:
        fixed_view = pool.submit(
            render_view,
            fixed_path,
            config.view_mpp_um,
            config.channel,
            config.mask_dilation_um,
            config.fixed_mpp_um,
            config.min_tissue_od,
            config.fixed_mpp_replace_um,
        )
        moving_view = pool.submit(
            render_view,
            moving_path,
            config.view_mpp_um,
            config.channel,
            config.mask_dilation_um,
            config.moving_mpp_um,
            config.min_tissue_od,
            config.moving_mpp_replace_um,
        )
        fixed, moving = fixed_view.result(), moving_view.result()
    # Quality, refusals and the QC picture on the fixed view's grid, shrunk to check_max_pixels.
    check_mpp_um = _check_mpp_um(fixed, config.check_max_pixels)
    fixed_check, moving_check = _coarsened(fixed, check_mpp_um), _coarsened(moving, check_mpp_um)
    check_shape = fixed_check.intensity.shape
    grid_um = pixel_centres_um(check_shape, fixed_check.spacing_um)
    before = _moving_on_fixed_grid(fixed_check, moving_check, grid_um)
    panels = [("as scanned", before[0], before[2])]
    for view in (fixed, moving):
        if not view.tissue_mask.any():
            reason = (
                f"no tissue found in {view.path} at {config.view_mpp_um} um/px: the slide looks blank. If it "
                f"is not, lower min_tissue_od (now {config.min_tissue_od}) or check its pixel size"
            )
            raise _fail(fixed_check, moving, reason, panels, qc_path)

    initial_map = initial_transform_map(fixed, moving, config.initial_mpp_um, config.rotation_step_deg)
    stage_maps = [stage_map(stage, config.bspline_grid_spacing_um) for stage in config.stages]
    try:
        transform_maps = run_elastix(
            itk_image(fixed.intensity, fixed.spacing_um),
            itk_image(moving.intensity, moving.spacing_um),
            itk_image(_metric_mask(fixed, config.mask_dilation_um), fixed.spacing_um),
            stage_maps,
            initial_map,
            config.number_of_threads,
        )
    except RuntimeError as error:
        raise _Refused(str(error), panels, fixed_check, moving) from error

    displacement = deformation_um(transform_maps, check_shape, fixed_check.spacing_um)
    after = _moving_on_fixed_grid(fixed_check, moving_check, grid_um + displacement.reshape(-1, 2))
    quality = measure_quality(fixed_check.intensity, fixed_check.tissue_mask, before[1:], after[1:])
    problem = _implausible(quality, config)
    caption = f"registered: NCC {quality.ncc_after:.2f}, tissue Dice {quality.dice_after:.2f}"
    panels.append((f"refused, {caption}" if problem else caption, after[0], after[2]))
    if problem:
        raise _Refused(problem, panels, fixed_check, moving)
    qc_png = render_registration_qc(fixed_check.rgb, fixed_check.tissue_mask, panels)
    if qc_path is not None:
        qc_path.write_bytes(qc_png)
    return RegistrationResult(
        fixed_path=fixed.path,
        moving_path=moving.path,
        fixed_mpp_um=fixed.mpp_level0_um,
        moving_mpp_um=moving.mpp_level0_um,
        fixed_dimensions_level0=fixed.dimensions_level0,
        moving_dimensions_level0=moving.dimensions_level0,
        view_mpp_um=config.view_mpp_um,
        fixed_view_spacing_um=fixed.spacing_um,
        moving_view_spacing_um=moving.spacing_um,
        transform_maps=tuple(transform_maps),
        quality=quality,
        config=config.model_dump(mode="json"),
        qc_png=qc_png,
    )


def register_slides(
    fixed_path: Path | str,
    moving_path: Path | str,
    config: RegistrationConfig = RegistrationConfig(),
    *,
    qc_path: Path | str | None = None,
) -> RegistrationResult:
    """Align ``moving_path`` to ``fixed_path`` and return the transform with its quality figures.

    Parameters
    ----------
    fixed_path, moving_path : Path or str
        Slides in any format :func:`tiling.slide.open_backend` reads.
    config : RegistrationConfig
        How to register (views, stages, thresholds); its defaults suit H&E slides of one section.
    qc_path : Path or str, optional
        Where to write the QC picture (PNG), on success and on failure alike.

    The result's ``config`` is the attempt that succeeded (its channel and
    view may differ from the ones asked for, see ``fallbacks``).

    Raises
    ------
    RegistrationError
        Naming both files, when a slide shows no tissue, or when every attempt
        failed in elastix or left the tissue Dice or stain NCC under
        ``min_tissue_dice`` or ``min_ncc``; the message gives each attempt's
        reason and what can be changed.
    """
    qc_path = Path(qc_path) if qc_path is not None else None
    failures: list[tuple[RegistrationConfig, _Refused]] = []
    for attempt in _attempts(config):
        try:
            return _register_once(fixed_path, moving_path, attempt, qc_path)
        except _Refused as refused:
            failures.append((attempt, refused))
    last = failures[-1][1]
    tried = "; ".join(f"{_label(attempt)}: {refused.reason}" for attempt, refused in failures)
    raise _fail(last.fixed_check, last.moving, f"{tried}. {_ADVICE}", last.panels, qc_path)
