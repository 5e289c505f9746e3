"""Local refinement of a slide registration at high resolution, around the points where tiles are cut.

The global registration runs on views of several µm/px, so tiles cut at
0.5 µm/px can still be off by a few µm. The tile centres are thinned to
*anchors*, one per ``anchor_spacing_um`` cell. At each anchor a fixed patch
(about 1 µm/px) and the moving slide resampled onto the same grid through the
global transform are compared; what is left between them is a shift of a few
µm. By default phase correlation finds it (:mod:`registration.phase_correlation`,
a few ms a patch, to 1/50 px; its Hann window weighs the patch centre, the
anchor, most). An elastix translation or affine fit per patch can be chosen
instead: about 300 ms a patch, nearly all elastix's fixed cost per call,
which made refinement of a whole slide (659 anchors) take longer than its
registration. Anchors on glass, on content the moving slide does not show, or
with an implausible shift are rejected with the reason. Any point's correction
is the Gaussian-weighted mean of the accepted anchors' corrections, fading to
zero (the global transform alone) far from every accepted anchor.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from registration.config import RefinementConfig
from registration.phase_correlation import phase_shift_px
from registration.quality import normalised_cross_correlation
from registration.result import RegistrationResult
from registration.sampling import interpolate_nodes, sample_slide
from registration.views import stain_intensity
from tiling.slide import opened_slide

_JSON = "refinement.json"
_CHUNK_POINTS = 4096  # points per block of the [N, K] anchor weights, to bound memory
# The global transform is mapped exactly on nodes this far apart and interpolated between them: its
# B-spline grid is 100 µm or more, so the interpolation errs by hundredths of a µm, and transformix
# handles 1/250 of the points (about 6 µs a point).
_NODE_SPACING_UM = 16.0
# Anchors measured at once: reading, resampling and FFTs release the GIL; a local Dask worker has two cores
# (flows.jobs.default_workers), and two threads of a patch pair each keep memory small.
_THREADS = 2


@dataclass(frozen=True, eq=False)
class RefinedRegistration:
    """A global registration plus local corrections measured at anchor points.

    The refined mapping of a fixed point ``p`` (µm) is ``base(p + c(p))``:
    the correction is a shift in the **fixed** slide's µm applied before the
    global transform, so the global rotation, scale and warp are kept.

    Attributes
    ----------
    base : RegistrationResult
        The global registration.
    anchors_xy : np.ndarray
        ``[K, 2]`` anchor points, fixed level-0 px.
    corrections_um : np.ndarray
        ``[K, 2]`` ``(x, y)`` correction per anchor, fixed-slide µm; 0 where rejected.
    accepted : np.ndarray
        ``[K]`` bool, whether each anchor's correction is used.
    reasons : tuple[str, ...]
        Per anchor, why it was rejected; ``""`` when accepted.
    ncc_before, ncc_after : np.ndarray
        ``[K]`` stain NCC of the patches without and with the correction (NaN when not measured).
    config : dict
        The :class:`RefinementConfig` used, as a dict.

    Arrays make ``==`` meaningless, so instances compare by identity.
    """

    base: RegistrationResult
    anchors_xy: np.ndarray
    corrections_um: np.ndarray
    accepted: np.ndarray
    reasons: tuple[str, ...] = ()
    ncc_before: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ncc_after: np.ndarray = field(default_factory=lambda: np.zeros(0))
    config: dict[str, object] = field(default_factory=dict)

    def correction_um(self, xy: np.ndarray) -> np.ndarray:
        """``[N, 2]`` correction (fixed µm) at fixed level-0 px ``xy``: 0 without accepted anchors."""
        points_um = np.asarray(xy, dtype=np.float64).reshape(-1, 2) * self.base.fixed_mpp_um
        config = RefinementConfig(**self.config)
        anchors_um = self.anchors_xy[self.accepted] * self.base.fixed_mpp_um
        corrections = self.corrections_um[self.accepted]
        out = np.zeros_like(points_um)
        if len(anchors_um) == 0:
            return out
        two_sigma2 = 2.0 * config.interpolation_sigma_um**2
        # A virtual anchor with zero correction at fallback_distance_um from every point: far from all
        # anchors it dominates and the global transform is left alone; near one it weighs nothing.
        far_weight = np.exp(-(config.fallback_distance_um**2) / two_sigma2)
        for start in range(0, len(points_um), _CHUNK_POINTS):
            chunk = points_um[start : start + _CHUNK_POINTS]
            distance2 = ((chunk[:, None, :] - anchors_um[None, :, :]) ** 2).sum(axis=-1)
            weights = np.exp(-distance2 / two_sigma2)
            out[start : start + len(chunk)] = weights @ corrections / (weights.sum(axis=1) + far_weight)[:, None]
        return out

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Map ``[N, 2]`` fixed level-0 pixels ``(x, y)`` to moving level-0 pixels, float64."""
        points = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if not self.accepted.any():
            return self.base.map_points(points)
        return self.base.map_points(points + self.correction_um(points) / self.base.fixed_mpp_um)

    def save(self, folder: Path | str) -> Path:
        """Write the global result (:meth:`RegistrationResult.save`) and ``refinement.json`` into ``folder``."""
        folder = self.base.save(folder)
        record = {
            "anchors_xy_level0": self.anchors_xy.tolist(),
            "corrections_um": self.corrections_um.tolist(),
            "correction_frame": "fixed slide µm, applied before the global transform",
            "accepted": self.accepted.tolist(),
            "reasons": list(self.reasons),
            "ncc_before": _json_floats(self.ncc_before),
            "ncc_after": _json_floats(self.ncc_after),
            "config": self.config,
        }
        (folder / _JSON).write_text(json.dumps(record, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> RefinedRegistration:
        """Read a refinement written by :meth:`save`."""
        folder = Path(folder)
        record = json.loads((folder / _JSON).read_text())
        return cls(
            base=RegistrationResult.load(folder),
            anchors_xy=np.asarray(record["anchors_xy_level0"], dtype=np.float64).reshape(-1, 2),
            corrections_um=np.asarray(record["corrections_um"], dtype=np.float64).reshape(-1, 2),
            accepted=np.asarray(record["accepted"], dtype=bool),
            reasons=tuple(record["reasons"]),
            ncc_before=np.asarray([np.nan if v is None else v for v in record["ncc_before"]], dtype=np.float64),
            ncc_after=np.asarray([np.nan if v is None else v for v in record["ncc_after"]], dtype=np.float64),
            config=record["config"],
        )


def _json_floats(values: np.ndarray) -> list[float | None]:
    """JSON has no NaN: unmeasured values become ``null``."""
    return [None if np.isnan(v) else float(v) for v in values]


def select_anchors(points_xy: np.ndarray, mpp_um: float, spacing_um: float) -> np.ndarray:
    """``[K, 2]`` of ``points_xy`` (level-0 px), one per ``spacing_um`` square cell: the one nearest its cell's mean.

    Taking a real point, near the middle of the cell's points, keeps anchors
    on tissue where tiles are, rather than on the glass of a cell's corner.
    """
    points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return points.copy()
    cells = np.floor(points * mpp_um / spacing_um).astype(np.int64)
    _, cell_of_point = np.unique(cells, axis=0, return_inverse=True)
    cell_of_point = cell_of_point.ravel()
    anchors = []
    for cell in range(cell_of_point.max() + 1):
        members = points[cell_of_point == cell]
        anchors.append(members[np.argmin(((members - members.mean(axis=0)) ** 2).sum(axis=1))])
    return np.array(anchors)


@dataclass(frozen=True)
class _Patch:
    """``[n, n]`` stain ``intensity`` (float32) and ``tissue`` (bool) of one slide on an anchor's patch grid."""

    intensity: np.ndarray
    tissue: np.ndarray


def _patch(rgb: np.ndarray, config: RefinementConfig) -> _Patch:
    return _Patch(stain_intensity(rgb, config.channel), rgb.min(axis=-1) <= config.glass_level)


@dataclass(frozen=True)
class _Outcome:
    """One anchor's measured correction (fixed µm), why it is rejected (``""`` if not), and the NCC around it."""

    correction_um: np.ndarray
    reason: str
    ncc_before: float = np.nan
    ncc_after: float = np.nan


def measure_anchors(result: RegistrationResult, anchors_xy: np.ndarray, config: RefinementConfig) -> list[_Outcome]:
    """Per anchor, the correction measured between the fixed patch and the moving slide resampled onto its grid.

    The patch is ``patch_size_um`` square at ``patch_mpp_um``, centred on the
    anchor. Moving positions of all anchors' nodes go through one
    ``map_points`` call, since each transformix call has a fixed cost. Anchors
    are read and measured :data:`_THREADS` at a time: region reads, resampling
    and FFTs release the GIL, and only a patch pair per thread is held.
    """
    size = max(8, round(config.patch_size_um / config.patch_mpp_um))
    offsets_um = (np.arange(size) + 0.5 - size / 2) * config.patch_mpp_um
    node_count = max(2, int(np.ceil(config.patch_size_um / _NODE_SPACING_UM)) + 1)
    node_offsets_um = np.linspace(offsets_um[0], offsets_um[-1], node_count)
    anchors_um = np.asarray(anchors_xy, dtype=np.float64).reshape(-1, 2) * result.fixed_mpp_um

    def grid(values_um: np.ndarray, anchor_um: np.ndarray) -> np.ndarray:  # [len, len, 2] fixed level-0 px
        dx, dy = np.meshgrid(values_um, values_um)
        return (anchor_um + np.stack([dx, dy], axis=-1)) / result.fixed_mpp_um

    nodes = np.stack([grid(node_offsets_um, anchor) for anchor in anchors_um]) if len(anchors_um) else np.zeros(0)
    moving_nodes = result.map_points(nodes.reshape(-1, 2)).reshape(nodes.shape)
    # elastix fits (transform != "phase") keep to one thread: they are multi-threaded themselves.
    threads = _THREADS if config.transform == "phase" else 1
    with (
        opened_slide(result.fixed_path) as fixed,
        opened_slide(result.moving_path) as moving,
        ThreadPoolExecutor(threads) as pool,
    ):

        def measure(index: int) -> _Outcome:
            fixed_xy = grid(offsets_um, anchors_um[index])
            fixed_rgb = sample_slide(fixed, result.fixed_mpp_um, fixed_xy, config.patch_mpp_um)
            moving_xy = interpolate_nodes(moving_nodes[index], size)
            moving_rgb = sample_slide(moving, result.moving_mpp_um, moving_xy, config.patch_mpp_um)
            return _measure(_patch(fixed_rgb, config), _patch(moving_rgb, config), config)

        return list(pool.map(measure, range(len(anchors_um))))


def _shifted(image: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``p + shift_px``, NaN where that falls outside it."""
    matrix = np.array([[1.0, 0.0, shift_px[0]], [0.0, 1.0, shift_px[1]]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(image, matrix, image.shape[::-1], flags=flags, borderValue=np.nan)


def _assess(fixed, moving, shift_um: np.ndarray, config: RefinementConfig) -> tuple[float, str]:
    """NCC of the patches with the shift applied, and why the shift is implausible (``""`` if it is not)."""
    length = float(np.linalg.norm(shift_um))
    shift_px = shift_um / config.patch_mpp_um
    moved = _shifted(moving.intensity, shift_px)
    tissue = fixed.tissue | (_shifted(moving.tissue.astype(np.float32), shift_px) > 0.5)
    ncc = normalised_cross_correlation(fixed.intensity, moved, tissue & ~np.isnan(moved))
    if length > config.max_shift_um:
        return ncc, f"shift {length:.1f} um exceeds max_shift_um {config.max_shift_um}"
    if ncc < config.min_ncc:
        return ncc, f"stain NCC {ncc:.2f} after the shift is under min_ncc {config.min_ncc}"
    return ncc, ""


def _patch_shift_um(fixed: _Patch, moving: _Patch, config: RefinementConfig) -> np.ndarray:
    """``(x, y)`` µm ``t`` such that the fixed patch at its centre shows what the moving patch shows ``t`` further."""
    if config.transform == "phase":
        return phase_shift_px(fixed.intensity, moving.intensity)[0] * config.patch_mpp_um
    from registration.elastix import register_patch_um

    return register_patch_um(
        fixed.intensity, moving.intensity, config.patch_mpp_um, config.transform, config.number_of_threads
    )


def _measure(fixed: _Patch, moving: _Patch, config: RefinementConfig) -> _Outcome:
    """One anchor: refused on glass or unrelated content, else the shift between its patches and its NCC."""
    fractions = (fixed.tissue.mean(), moving.tissue.mean())
    if min(fractions) < config.min_tissue_fraction:
        side = "fixed" if fractions[0] < config.min_tissue_fraction else "moving"
        return _Outcome(np.zeros(2), f"{side} patch is {min(fractions):.0%} tissue, under min_tissue_fraction")
    ncc_before = _assess(fixed, moving, np.zeros(2), config)[0]
    try:
        shift_um = _patch_shift_um(fixed, moving, config)
    except RuntimeError as error:
        return _Outcome(np.zeros(2), str(error).splitlines()[0], ncc_before)
    ncc_after, reason = _assess(fixed, moving, shift_um, config)
    return _Outcome(shift_um, reason, ncc_before, ncc_after)


def refine_registration(
    result: RegistrationResult, points_xy: np.ndarray, config: RefinementConfig = RefinementConfig()
) -> RefinedRegistration:
    """Refine ``result`` around ``points_xy`` with one small translation measured per anchor.

    Parameters
    ----------
    result : RegistrationResult
        The global registration; its slides must still be readable at their paths.
    points_xy : np.ndarray
        ``[N, 2]`` fixed level-0 px where accuracy matters (tile centres); anchors are chosen among them.
    config : RefinementConfig
        Anchor spacing, patch size and resolution, acceptance thresholds.

    An anchor that fails (glass, unrelated content, an elastix error, an
    implausible shift) is kept with ``accepted`` False and its reason, so
    one bad patch never fails the slide.
    """
    anchors = select_anchors(points_xy, result.fixed_mpp_um, config.anchor_spacing_um)
    count = len(anchors)
    corrections = np.zeros((count, 2))
    accepted = np.zeros(count, dtype=bool)
    reasons = [""] * count
    ncc_before, ncc_after = np.full(count, np.nan), np.full(count, np.nan)
    for index, outcome in enumerate(measure_anchors(result, anchors, config)):
        reasons[index], ncc_before[index], ncc_after[index] = outcome.reason, outcome.ncc_before, outcome.ncc_after
        if not outcome.reason:
            corrections[index], accepted[index] = outcome.correction_um, True
    return RefinedRegistration(
        base=result,
        anchors_xy=anchors,
        corrections_um=corrections,
        accepted=accepted,
        reasons=tuple(reasons),
        ncc_before=ncc_before,
        ncc_after=ncc_after,
        config=config.model_dump(mode="json"),
    )
