"""Accuracy of the refinement's shift estimate on real tissue patches with known shifts.

Run it from the repository root::

    .venv/bin/python benchmarks/phase_correlation.py              # ~1 min idle, 40 patches
    .venv/bin/python benchmarks/phase_correlation.py --gradient 0.005 --elastix

Patches are cut from the CMU sample as refinement cuts them
(:func:`registration.sampling.sample_slide`, 256 px at 1 µm/px, the stain
optical density): a fixed patch at a random tissue point and a moving patch
whose grid is displaced by a known random shift of up to 3 µm (plus, with
``--gradient``, a random linear map of that standard deviation about the
centre, as a local warp leaves). The truth is the displacement itself, so the
reference is independent of every estimator. Each estimator's error is the
distance (µm) between its shift at the patch centre and the truth.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from registration import phase_correlation  # noqa: E402
from registration.sampling import sample_slide  # noqa: E402
from registration.views import stain_intensity  # noqa: E402
from tiling.slide import opened_slide  # noqa: E402

CMU_SVS = _HERE.parent / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"
PATCH_PX, PATCH_MPP_UM, MAX_SHIFT_UM = 256, 1.0, 3.0


def patches(count: int, gradient: float, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``count`` (fixed, moving, true shift µm) triples; the moving patch shows the slide at ``p + shift``."""
    rng = np.random.default_rng(seed)
    offsets = (np.arange(PATCH_PX) + 0.5 - PATCH_PX / 2) * PATCH_MPP_UM
    grid = np.stack(np.meshgrid(offsets, offsets), axis=-1)
    cases = []
    with opened_slide(CMU_SVS) as slide:
        mpp = slide.mpp_um
        size_um = np.array(slide.level_dimensions[0]) * mpp
        while len(cases) < count:
            centre = rng.uniform(200.0, size_um - 200.0)
            fixed = sample_slide(slide, mpp, (centre + grid) / mpp, PATCH_MPP_UM)
            if (fixed.min(axis=-1) < 215).mean() < 0.5:
                continue  # mostly glass: refinement rejects such anchors
            shift = rng.uniform(-MAX_SHIFT_UM, MAX_SHIFT_UM, 2)
            linear = rng.normal(0.0, gradient, (2, 2))
            moving = sample_slide(slide, mpp, (centre + grid + shift + grid @ linear.T) / mpp, PATCH_MPP_UM)
            cases.append((stain_intensity(fixed, "od"), stain_intensity(moving, "od"), shift))
    return cases


def measure(label: str, estimate: Callable[[np.ndarray, np.ndarray], np.ndarray], cases) -> str:
    """A table row: median and p90 error (µm), mean error vector, ms a patch."""
    started = time.perf_counter()
    # Every estimator returns t with fixed(c) showing what moving shows at c + t: the moving grid is displaced
    # by `shift`, so t = -shift.
    found = np.array([estimate(fixed, moving) for fixed, moving, _ in cases])
    seconds = (time.perf_counter() - started) / len(cases)
    residual = found + np.array([shift for *_, shift in cases])
    error = np.linalg.norm(residual, axis=1)
    mean = ", ".join(f"{v:+.3f}" for v in residual.mean(axis=0))
    return f"| {label} | {np.median(error):.3f} | {np.percentile(error, 90):.3f} | ({mean}) | {seconds * 1000:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=40)
    parser.add_argument("--gradient", type=float, default=0.0, help="std of the linear part of the displacement")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--elastix", action="store_true", help="also the elastix translation and affine fits (slow)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="builtin type .* has no __module__ attribute")
    cases = patches(args.patches, args.gradient, args.seed)

    def phase(whitening: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        def estimate(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
            default, phase_correlation._WHITENING = phase_correlation._WHITENING, whitening
            try:
                return phase_correlation.phase_shift_px(fixed, moving)[0] * PATCH_MPP_UM
            finally:
                phase_correlation._WHITENING = default

        return estimate

    rows = [measure(f"phase correlation, whitening {w:g}", phase(w), cases) for w in (0.0, 0.25, 0.5)]
    try:
        from skimage.registration import phase_cross_correlation
    except ImportError:
        pass
    else:
        rows.append(
            measure(
                "scikit-image phase_cross_correlation, upsample 100",
                lambda f, m: -phase_cross_correlation(f, m, upsample_factor=100)[0][::-1] * PATCH_MPP_UM,
                cases,
            )
        )
    if args.elastix:
        from registration.elastix import register_patch_um

        for transform in ("translation", "affine"):
            rows.append(
                measure(
                    f"elastix {transform} (its shift at the centre)",
                    lambda f, m, t=transform: register_patch_um(f, m, PATCH_MPP_UM, t),
                    cases,
                )
            )
    print(
        f"\n{len(cases)} patches of {PATCH_PX} px at {PATCH_MPP_UM} µm/px, shifts ≤ {MAX_SHIFT_UM} µm, "
        f"linear part std {args.gradient}, seed {args.seed}.\n"
    )
    print(
        "| estimator | median error (µm) | p90 (µm) | mean error vector (µm) | ms / patch |\n|---|---:|---:|---|---:|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
