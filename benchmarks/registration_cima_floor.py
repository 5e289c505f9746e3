"""What the CIMA landmarks allow: the least rTRE an affine or a smooth map could score on each H&E → IHC pair.

Run it from the repository root (seconds; no registration)::

    .venv/bin/python benchmarks/registration_cima_floor.py

``benchmarks/registration.py`` scores registrations at annotator PS's 80
landmarks per stain (ANHIR rTRE: error over the moving image's diagonal).
Here the landmarks are fitted onto each other, which no image-based
registration can beat on average: the least-squares affine map (in-sample,
and leave-one-out), and a thin-plate spline through the other 79 landmarks
predicting the one left out (leave-one-out; ``smoothing`` 0 interpolates,
larger values smooth). The annotators' own disagreement (PS against JB, on
the two stains both annotated) is the scale of the landmarks' noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.interpolate import RBFInterpolator

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "registration" / "cima_lung-lesion_3"
CIMA = _SHARED if _SHARED.is_dir() else Path(__file__).resolve().parents[1] / "tests" / "data" / "registration"
CIMA = CIMA if CIMA.name == "cima_lung-lesion_3" else CIMA / "cima_lung-lesion_3"
IHC = ("CD31-3", "Cc10-5", "Ki67-7", "proSPC-4")
SMOOTHING = (0.0, 100.0, 1000.0, 3000.0)  # in 5 % px units


def landmarks(annotator: str, stain: str) -> np.ndarray:
    """``[80, 2]`` landmarks ``(x, y)`` of one stain in px of the 5 % JPEGs (the CSVs hold 50 % px)."""
    csv = CIMA / "landmarks" / f"user-{annotator}_scale-50pc" / f"29-041-Izd2-w35-{stain}-les3.csv"
    return np.loadtxt(csv, delimiter=",", skiprows=1, usecols=(1, 2)) * 0.1


def diagonal_px(stain: str) -> float:
    """The moving 5 % JPEG's diagonal, px."""
    import cv2

    height, width = cv2.imread(str(CIMA / "scale-5pc" / f"29-041-Izd2-w35-{stain}-les3.jpg")).shape[:2]
    return float(np.hypot(width, height))


def affine_residuals(fixed: np.ndarray, moving: np.ndarray, leave_out: int | None = None) -> np.ndarray:
    design = np.c_[fixed, np.ones(len(fixed))]
    keep = np.arange(len(fixed)) != leave_out
    coefficients, *_ = np.linalg.lstsq(design[keep], moving[keep], rcond=None)
    return np.linalg.norm(design @ coefficients - moving, axis=1)


def main() -> None:
    fixed = landmarks("PS", "He")
    print(
        "| pair | affine, least squares (%) | affine, leave-one-out (%) | "
        + " | ".join(f"thin-plate spline s={s:g}, leave-one-out (%)" for s in SMOOTHING)
        + " |"
    )
    print("|---|" + "---:|" * (2 + len(SMOOTHING)))
    for stain in IHC:
        moving, diagonal = landmarks("PS", stain), diagonal_px(stain)
        cells = [np.median(affine_residuals(fixed, moving)) / diagonal]
        cells.append(np.median([affine_residuals(fixed, moving, i)[i] for i in range(len(fixed))]) / diagonal)
        for smoothing in SMOOTHING:
            errors = []
            for i in range(len(fixed)):
                keep = np.arange(len(fixed)) != i
                spline = RBFInterpolator(fixed[keep], moving[keep], kernel="thin_plate_spline", smoothing=smoothing)
                errors.append(np.linalg.norm(spline(fixed[i : i + 1])[0] - moving[i]) / diagonal)
            cells.append(np.median(errors))
        print(f"| He→{stain} | " + " | ".join(f"{100 * c:.2f}" for c in cells) + " |")
    for stain in ("He", "proSPC-4"):
        spread = np.linalg.norm(landmarks("PS", stain) - landmarks("JB", stain), axis=1) / diagonal_px(stain)
        print(f"\nannotators PS vs JB on {stain}: median {100 * np.median(spread):.2f} %")


if __name__ == "__main__":
    main()
