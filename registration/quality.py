"""Figures that say how well two views agree, before and after registration."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class RegistrationQuality:
    """Agreement of the fixed view with the moving view, on the fixed view's grid.

    ``ncc_*`` is the normalised cross-correlation of the stain intensities
    (-1 to 1) over the tissue of either slide; ``dice_*`` the Dice overlap of
    the tissue masks (0 to 1). ``*_before`` compares the views as they lie
    (same µm, no transform), ``*_after`` with the moving view warped by the
    registration.
    """

    ncc_before: float
    ncc_after: float
    dice_before: float
    dice_after: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def normalised_cross_correlation(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """NCC of two images of equal shape, over the pixels ``where`` is true (all by default); 0 if either is flat."""
    if where is not None:
        a, b = a[where], b[where]
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks of equal shape; 0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 0.0


def measure_quality(
    fixed_intensity: np.ndarray,
    fixed_mask: np.ndarray,
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
) -> RegistrationQuality:
    """Compare the fixed view with the moving (intensity, mask) on its grid, without and with the transform."""
    ncc_before = normalised_cross_correlation(fixed_intensity, before[0], fixed_mask | before[1])
    ncc_after = normalised_cross_correlation(fixed_intensity, after[0], fixed_mask | after[1])
    return RegistrationQuality(ncc_before, ncc_after, dice(fixed_mask, before[1]), dice(fixed_mask, after[1]))
