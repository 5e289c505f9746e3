"""Synthetic PLISM-like conditions of one real slide, each with an exact ground truth.

PLISM scans the same tissue under several H&E stainings (each a consecutive
cut of the block) on several scanners. Real PLISM slides cannot be fetched in
tests, so this module makes look-alikes from any small source slide: one
pyramidal TIFF per condition ``{staining}_{scanner}`` and a JSON ground truth
that maps reference level-0 pixels to the condition's level-0 pixels exactly.

The model of a condition, in µm (frames as in :class:`GroundTruth`):

- **staining** (the cut): the section point ``s`` shows the tissue at
  ``t = s + d(s)``, ``d`` a sum of three plane sine waves (1.5–4 µm each,
  300–800 µm wavelength), the same for every scanner of that staining. Its
  colour comes from colour deconvolution: source optical density → stain
  concentrations (Ruifrok & Johnston vectors), each stain's amount scaled by
  0.75–1.3 and the H and E vectors tilted, then mixed back to optical density.
- **scanner** (the placement and the optics): the section point ``s`` lands on
  the slide at ``c + scale · R(θ) (s − c) + shift`` (θ ≤ 2.5°, shift ≤ 30 µm,
  scale within 0.6 %, ``c`` the tissue centre), sampled at the scanner's pixel
  size; its sensor raises each channel's optical density to a power 0.9–1.1
  (a tint that keeps glass white), its focus blurs by 0.3–1 px, and it
  compresses with JPEG quality 75–92.
- the **reference** staining and scanner change nothing: the reference
  condition is the source resampled to the reference pixel size, its truth
  the identity.

Every parameter is drawn from a generator seeded by ``seed`` and the staining
or scanner name alone, so a condition is the same whichever others are made
with it. Slides are rendered by inverse mapping (each slide pixel asks which
source point it shows, in closed form), so the pictures match the truth to
float32 rounding; the reference → condition direction needs the inverse of
``d``, a contraction solved by fixed-point iteration to 1e-9 µm.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from registration.ground_truth import MARGIN_UM, ElasticWave, GroundTruth, Placement
from registration.stains import OD_OF_UINT8, STAINS_OD, UNMIX
from tiling.errors import MissingMppError
from tiling.pyramid_tiff import write_pyramid_tiff
from tiling.slide import opened_slide, read_region

# Approximate nominal level-0 pixel sizes (µm/px) of PLISM's scanners at 40×, as vendors state them.
SCANNER_MPP_UM = {"AT2": 0.2527, "GT450": 0.263, "P": 0.25, "S210": 0.2208, "S360": 0.2304, "S60": 0.2208, "SQ": 0.2437}
# Real 40× pixels would make a 0.5 µm/px source 4× larger and blurrier than it is; 2× keeps slides near its size.
DEFAULT_MPP_SCALE = 2.0
REFERENCE_JPEG_QUALITY = 90


@dataclass(frozen=True)
class Appearance:
    """How a condition looks beyond geometry.

    Attributes
    ----------
    od_matrix : tuple
        ``[3, 3]`` row-vector map of optical density: ``od_condition = od_source @ od_matrix``.
    blur_sigma_px : float
        Gaussian focus blur, condition pixels; 0 for none.
    jpeg_quality : int
        JPEG quality of the TIFF tiles.
    """

    od_matrix: tuple[tuple[float, float, float], ...]
    blur_sigma_px: float
    jpeg_quality: int

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Recolour and blur ``[H, W, 3]`` uint8 RGB; white (optical density 0) stays white."""
        negative_od = cv2.transform(cv2.LUT(rgb, OD_OF_UINT8), -np.asarray(self.od_matrix, dtype=np.float32).T)
        recoloured = cv2.convertScaleAbs(cv2.exp(np.minimum(negative_od, 0.0)), alpha=256.0, beta=-1.0)
        if self.blur_sigma_px > 0:
            recoloured = cv2.GaussianBlur(recoloured, (0, 0), self.blur_sigma_px)
        return recoloured


@dataclass(frozen=True)
class SyntheticCondition:
    """One generated slide: its staining, scanner, file, pixel size (µm/px) and ground truth."""

    staining: str
    scanner: str
    path: Path
    mpp_um: float
    truth: GroundTruth

    @property
    def name(self) -> str:
        return f"{self.staining}_{self.scanner}"


def _rng(seed: int, kind: str, name: str) -> np.random.Generator:
    """A generator that depends on the seed and one staining or scanner name only."""
    return np.random.default_rng([seed, zlib.crc32(f"{kind}/{name}".encode())])


def _cut_waves(staining: str, seed: int) -> tuple[ElasticWave, ...]:
    """Three waves of 1.5–4 µm and 300–800 µm wavelength: summed slope ≤ 0.25, so well invertible."""
    rng = _rng(seed, "cut", staining)
    waves = []
    for _ in range(3):
        amplitude, amplitude_angle = rng.uniform(1.5, 4.0), rng.uniform(0.0, 2 * np.pi)
        waves.append(
            ElasticWave(
                amplitude_um=(float(amplitude * np.cos(amplitude_angle)), float(amplitude * np.sin(amplitude_angle))),
                direction_deg=float(rng.uniform(0.0, 360.0)),
                wavelength_um=float(rng.uniform(300.0, 800.0)),
                phase_rad=float(rng.uniform(0.0, 2 * np.pi)),
            )
        )
    return tuple(waves)


def _staining_od_matrix(staining: str, seed: int) -> np.ndarray:
    """``[3, 3]`` source → staining optical density: unmix, rescale H and E, tilt their vectors, remix."""
    rng = _rng(seed, "stain", staining)
    stains = STAINS_OD.copy()
    stains[:2] = np.clip(stains[:2] + rng.normal(0.0, 0.05, size=(2, 3)), 0.01, None)
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    amounts = np.array([rng.uniform(0.75, 1.3), rng.uniform(0.75, 1.3), 1.0])
    return UNMIX @ np.diag(amounts) @ stains


def _scanner_placement(scanner: str, seed: int) -> Placement:
    rng = _rng(seed, "placement", scanner)
    rotation_deg, scale = float(rng.uniform(-2.5, 2.5)), float(1.0 + rng.uniform(-0.006, 0.006))
    shift_x, shift_y = (float(v) for v in rng.uniform(-30.0, 30.0, size=2))
    return Placement(rotation_deg, scale, (shift_x, shift_y))


def _scanner_effects(
    scanner: str, staining_od: np.ndarray, seed: int, *, is_reference: bool
) -> tuple[Placement, Appearance]:
    """Placement and appearance; the reference scanner shows the section as the source does."""
    if is_reference:
        return Placement(), Appearance(_rows(staining_od), 0.0, REFERENCE_JPEG_QUALITY)
    rng = _rng(seed, "optics", scanner)
    od_matrix = staining_od @ np.diag(rng.uniform(0.9, 1.1, size=3))  # per-channel gamma
    blur_sigma_px, jpeg_quality = float(rng.uniform(0.3, 1.0)), int(rng.integers(75, 93))
    return _scanner_placement(scanner, seed), Appearance(_rows(od_matrix), blur_sigma_px, jpeg_quality)


def _rows(matrix: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in matrix)


def _render(source_rgb: np.ndarray, source_mpp_um: float, truth: GroundTruth, size_px: tuple[int, int]) -> np.ndarray:
    """``[H, W, 3]`` uint8 slide whose pixel centres show the source points the truth assigns them."""
    width, height = size_px
    x_um = ((np.arange(width, dtype=np.float32) + 0.5) * truth.mpp_um)[None, :]
    y_um = ((np.arange(height, dtype=np.float32) + 0.5) * truth.mpp_um)[:, None]
    tissue_x, tissue_y = truth.tissue_um(x_um, y_um)
    # cv2.remap indexes pixel centres; source pixel i spans [i, i + 1) · mpp µm of the tissue frame.
    map_x, map_y = tissue_x / source_mpp_um - 0.5, tissue_y / source_mpp_um - 0.5
    white = (255, 255, 255)
    return cv2.remap(source_rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=white)


def _read_source(path: Path) -> tuple[np.ndarray, float]:
    """The whole level 0 of ``path`` as ``[H, W, 3]`` uint8, and its µm/px (a small region is expected)."""
    with opened_slide(path) as slide:
        if slide.mpp_um is None:
            raise MissingMppError(path, "the source slide records no pixel size; synthetic conditions need one")
        width, height = slide.level_dimensions[0]
        return read_region(slide, 0, (0, 0, width, height)), slide.mpp_um


def _check_names(stainings: Sequence[str], scanners: Sequence[str], reference: tuple[str, str]) -> None:
    unknown = sorted(set(scanners) - set(SCANNER_MPP_UM))
    if unknown:
        raise ValueError(f"unknown scanners {unknown}: known are {sorted(SCANNER_MPP_UM)}")
    if reference[0] not in stainings or reference[1] not in scanners:
        raise ValueError(f"reference condition {reference} must be among the stainings and scanners generated")


def make_synthetic_plism(
    source: Path | str,
    out_dir: Path | str,
    *,
    stainings: Sequence[str] = ("GMH", "GIVH", "HR"),
    scanners: Sequence[str] = ("S60", "AT2", "GT450"),
    reference: tuple[str, str] = ("GMH", "S60"),
    seed: int = 0,
    mpp_scale: float = DEFAULT_MPP_SCALE,
) -> list[SyntheticCondition]:
    """Write every ``staining × scanner`` condition of ``source`` into ``out_dir``.

    Each condition becomes ``out_dir/{staining}_{scanner}.tif`` and
    ``out_dir/ground_truth/{staining}_{scanner}.json`` (a :class:`GroundTruth`
    from the reference condition's level-0 pixels); ``out_dir/synthetic_plism.json``
    records the source, seed and every condition's appearance. A condition's
    pixel size is its scanner's nominal one in :data:`SCANNER_MPP_UM` times
    ``mpp_scale``: the default 2 gives 0.44–0.53 µm/px, near a 0.5 µm/px
    source's own; 1 gives real 40× sizes (4× the pixels and the time).

    Raises
    ------
    ValueError
        For a scanner without a known pixel size, or a reference not generated.
    MissingMppError
        When the source records no pixel size.
    """
    _check_names(stainings, scanners, reference)
    source, out_dir = Path(source), Path(out_dir)
    source_rgb, source_mpp_um = _read_source(source)
    extent_um = np.array(source_rgb.shape[1::-1]) * source_mpp_um
    centre_um = (float(extent_um[0] / 2), float(extent_um[1] / 2))
    reference_mpp_um = SCANNER_MPP_UM[reference[1]] * mpp_scale
    (out_dir / "ground_truth").mkdir(parents=True, exist_ok=True)
    conditions, appearances = [], {}
    for staining in stainings:
        is_reference_cut = staining == reference[0]
        waves = () if is_reference_cut else _cut_waves(staining, seed)
        staining_od = np.eye(3) if is_reference_cut else _staining_od_matrix(staining, seed)
        for scanner in scanners:
            mpp_um = SCANNER_MPP_UM[scanner] * mpp_scale
            placement, appearance = _scanner_effects(scanner, staining_od, seed, is_reference=scanner == reference[1])
            truth = GroundTruth(reference_mpp_um, mpp_um, centre_um, MARGIN_UM, placement, waves)
            size_px = tuple(int(v) for v in np.round((extent_um + 2 * MARGIN_UM) / mpp_um))
            condition = SyntheticCondition(staining, scanner, out_dir / f"{staining}_{scanner}.tif", mpp_um, truth)
            rgb = appearance.apply(_render(source_rgb, source_mpp_um, truth, size_px))
            write_pyramid_tiff(condition.path, rgb, mpp_um, jpeg_quality=appearance.jpeg_quality)
            truth.save(out_dir / "ground_truth" / f"{condition.name}.json")
            conditions.append(condition)
            appearances[condition.name] = asdict(appearance)
    manifest = {
        "source": str(source),
        "source_mpp_um": source_mpp_um,
        "seed": seed,
        "mpp_scale": mpp_scale,
        "reference": "_".join(reference),
        "appearance": appearances,
    }
    (out_dir / "synthetic_plism.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return conditions


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m registration.synthetic OUT_DIR``: write a synthetic PLISM set for demos."""
    parser = argparse.ArgumentParser(prog="python -m registration.synthetic", description=main.__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        help="small slide with a pixel size (the repository has tests/data/slides/CMU-1-Small-Region.svs)",
    )
    parser.add_argument("--stainings", nargs="+", default=["GMH", "GIVH", "HR"])
    parser.add_argument("--scanners", nargs="+", default=["S60", "AT2", "GT450"], choices=sorted(SCANNER_MPP_UM))
    parser.add_argument("--reference", nargs=2, default=["GMH", "S60"], metavar=("STAINING", "SCANNER"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mpp-scale", type=float, default=DEFAULT_MPP_SCALE, help="multiplies nominal scanner mpp")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    conditions = make_synthetic_plism(
        args.source,
        args.out_dir,
        stainings=args.stainings,
        scanners=args.scanners,
        reference=tuple(args.reference),
        seed=args.seed,
        mpp_scale=args.mpp_scale,
    )
    for condition in conditions:
        print(f"{condition.name}: {condition.mpp_um:.4f} µm/px -> {condition.path}")
    print(f"{len(conditions)} conditions in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
