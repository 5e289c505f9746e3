"""Registration at whole-slide scale: seconds and error for a 10 mm slide pair, per view resolution.

Run it from the repository root::

    .venv/bin/python benchmarks/registration_whole_slide.py           # ~6 min on 2 cores
    .venv/bin/python benchmarks/registration_whole_slide.py --quick   # a 4 mm pair, no refinement

``benchmarks/registration.py`` measures accuracy on small images (1-4 mm); a
PLISM slide holds about 200 mm² of tissue, so its views have many times the
pixels, and its refinement one anchor per 400 µm of tissue. Here the fixed
slide is the tiling benchmark's large slide (``benchmarks/tiling.py``: the
real CMU sample's tissue, upscaled to 0.25 µm/px and mirrored into a
40,960-px square, 10.2 mm, ~80 mm² of tissue), and the moving slide is that
slide scaled by 0.95 (as a scanner of 0.263 µm/px would see it), rotated by
1°, tinted and re-encoded (JPEG q85), written by libvips. The true map is
that similarity, as libvips applies it (:func:`true_moving_px`). Errors are measured at the centres of the fixed
slide's 224-px tiles at 0.5 µm/px (the tile store's grid), in µm on the moving
slide. Seconds are one ``register_slides`` call (or one
``refine_registration`` call) after a warm-up call has loaded ITK.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts named like the packages (tiling.py, registration.py): drop it from sys.path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pyvips  # noqa: E402

from registration import RegistrationConfig, register_slides  # noqa: E402
from registration.refine import refine_registration  # noqa: E402
from tiling.config import TilingConfig  # noqa: E402
from tiling.pyramid_tiff import write_pyramid_tiff  # noqa: E402
from tiling.slide import opened_slide  # noqa: E402
from tiling.tile_slide import plan_tiles  # noqa: E402

REPO = _HERE.parent
CMU_SVS = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"
FIXED_MPP_UM = 0.25
SCALE, ANGLE_DEG, TINT = 0.95, 1.0, (0.95, 1.0, 1.03)
GOAL_SECONDS, GOAL_UM = 60.0, 1.0


def _tiling_slides():
    """benchmarks/tiling_slides.py as a module (by path: this folder is off sys.path), for the large slide."""
    spec = importlib.util.spec_from_file_location("tiling_slides", _HERE / "tiling_slides.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def build_moving(fixed: Path, path: Path) -> Path:
    """The fixed slide seen by another scanner: scaled, rotated, tinted, re-encoded."""
    if not path.exists():
        image = pyvips.Image.new_from_file(str(fixed))[:3]
        moved = image.similarity(scale=SCALE, angle=ANGLE_DEG, background=[255, 255, 255])
        moved = moved.linear(list(TINT), [0, 0, 0]).cast("uchar")
        mpp_um = FIXED_MPP_UM / SCALE
        temporary = path.with_suffix(".tmp.tif")
        temporary.parent.mkdir(parents=True, exist_ok=True)
        write_pyramid_tiff(temporary, moved, mpp_um, jpeg_quality=85)
        temporary.replace(path)
    return path


def true_moving_px(fixed_px: np.ndarray, size: int) -> np.ndarray:
    """Where the similarity puts fixed level-0 points (ADR 0003's frame) on the moving slide.

    libvips maps pixel *indices*, whose centres are ``index + 0.5`` in that
    frame, and shifts the result by a whole-pixel offset that it records on
    the output (its bounding box, rounded): not by the exact bounding box,
    which was 0.1 px off for this slide and 0.4 px for the ``--quick`` one.
    Checked against the centroids of Gaussian blobs turned by libvips (to 0.01 px).
    """
    angle = np.radians(ANGLE_DEG)
    matrix = SCALE * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    placed = pyvips.Image.black(size, size).similarity(scale=SCALE, angle=ANGLE_DEG)  # lazy: nothing is computed
    offset = np.array([placed.get("xoffset"), placed.get("yoffset")], dtype=np.float64)
    return (fixed_px - 0.5) @ matrix.T + 0.5 + offset


def _row(label: str, seconds: float, error_um: np.ndarray | None, note: str) -> str:
    median = f"{np.median(error_um):.2f}" if error_um is not None else ""
    p90 = f"{np.percentile(error_um, 90):.2f}" if error_um is not None else ""
    return f"| {label} | {seconds:.1f} | {median} | {p90} | {note} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".work")
    parser.add_argument("--quick", action="store_true", help="a 16,384-px (4 mm) pair and no refinement")
    parser.add_argument("--views", type=float, nargs="+", default=[8.0, 4.0, 2.0], help="view µm/px to compare")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="builtin type .* has no __module__ attribute")
    started = time.perf_counter()
    size = 16384 if args.quick else 40960
    fixed = _tiling_slides().build_slide(args.workdir / f"large-{size}" / "slide.tif", size)
    moving = build_moving(fixed, args.workdir / "registration" / f"moving-{size}.tif")
    with opened_slide(fixed) as backend:
        plan = plan_tiles(fixed, backend, FIXED_MPP_UM, TilingConfig())
    centres = plan.coordinates + plan.resolution.tile_size_level0 / 2
    truth = true_moving_px(centres, size)
    moving_mpp_um = FIXED_MPP_UM / SCALE

    def error_um(mapped: np.ndarray) -> np.ndarray:
        return np.linalg.norm(mapped - truth, axis=1) * moving_mpp_um

    warm = time.perf_counter()
    register_slides(CMU_SVS, CMU_SVS, RegistrationConfig(stages=("rigid",)))
    rows = [_row("warm-up: load ITK, first elastix call", time.perf_counter() - warm, None, "excluded below")]
    results = {}
    for view in args.views:
        begin = time.perf_counter()
        results[view] = register_slides(fixed, moving, RegistrationConfig(view_mpp_um=view))
        seconds = time.perf_counter() - begin
        quality = results[view].quality
        rows.append(
            _row(
                f"register, view {view:g} µm/px",
                seconds,
                error_um(results[view].map_points(centres)),
                f"NCC {quality.ncc_after:.2f}, Dice {quality.dice_after:.2f}",
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
    if not args.quick:
        coarsest = max(args.views)
        begin = time.perf_counter()
        refined = refine_registration(results[coarsest], centres)
        seconds = time.perf_counter() - begin
        rows.append(
            _row(
                f"refine the view-{coarsest:g} registration (defaults: anchors every 400 µm)",
                seconds,
                error_um(refined.map_points(centres)),
                f"{len(refined.anchors_xy)} anchors, {int(refined.accepted.sum())} accepted, "
                f"{seconds / len(refined.anchors_xy) * 1000:.0f} ms each",
            )
        )
    print(
        f"\nFixed {size:,}² px at {FIXED_MPP_UM} µm/px ({size * FIXED_MPP_UM / 1000:.1f} mm), {len(centres):,} "
        f"tiles; moving ×{SCALE}, {ANGLE_DEG}°. Goals: ≤ {GOAL_SECONDS:.0f} s a pair, median ≤ {GOAL_UM:.0f} µm. "
        f"Benchmark took {time.perf_counter() - started:.0f} s.\n"
    )
    print("| measure | seconds | median error (µm) | p90 error (µm) | notes |\n|---|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
