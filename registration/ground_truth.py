"""The exact ground truth of a synthetic condition: reference level-0 pixels → the condition's, and back.

A condition's geometry is a cut deformation (plane sine waves, one set per
staining) followed by a scanner placement (rotation, scale, shift about the
tissue centre), in µm; see :mod:`registration.synthetic` for how conditions
are drawn and rendered. Saved as readable JSON next to each synthetic slide.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

MARGIN_UM = 100.0  # glass around the tissue on every side: holds the worst rotation + shift + warp (≈ 92 µm)
_FIXED_POINT_TOLERANCE_UM = 1e-9


@dataclass(frozen=True)
class Placement:
    """Where a scanner lays the section: ``u = c + scale · R(rotation_deg) (s − c) + shift_um``, µm."""

    rotation_deg: float = 0.0
    scale: float = 1.0
    shift_um: tuple[float, float] = (0.0, 0.0)

    def matrix(self) -> np.ndarray:
        """``[2, 2]`` float64 ``scale · R``, acting on column vectors ``(x, y)``."""
        angle = np.deg2rad(self.rotation_deg)
        return self.scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


@dataclass(frozen=True)
class ElasticWave:
    """One plane wave of a cut's displacement: ``amplitude_um · sin(2π (s · n) / wavelength_um + phase_rad)``.

    ``n`` is the unit vector at ``direction_deg`` from the x axis; the wave's
    steepest slope is ``2π |amplitude_um| / wavelength_um``.
    """

    amplitude_um: tuple[float, float]
    direction_deg: float
    wavelength_um: float
    phase_rad: float

    @property
    def max_slope(self) -> float:
        return float(2 * np.pi * np.hypot(*self.amplitude_um) / self.wavelength_um)


@dataclass(frozen=True)
class GroundTruth:
    """Exact map from reference level-0 pixels to this condition's level-0 pixels.

    Frames, µm, x right and y down: the *tissue* frame is the source slide
    from its top-left corner; the *section* frame is this condition's cut,
    which shows the tissue point ``t = s + d(s)`` (``d`` the sum of
    ``waves``); the *canvas* frame is this condition's slide, where the
    section point ``s`` lies at ``margin + c + P (s − c) + shift``
    (``placement``, ``c = centre_um``). Level-0 pixel ``p`` of a slide is
    the point ``p · mpp`` of its canvas; the reference condition is the
    identity placement without waves.

    Attributes
    ----------
    reference_mpp_um, mpp_um : float
        µm per level-0 pixel of the reference slide and of this one.
    centre_um : tuple[float, float]
        Centre of the source tissue (tissue frame), about which scanners rotate.
    margin_um : float
        Offset of the tissue frame's origin on every canvas, on both axes.
    placement : Placement
        This scanner's placement of the section.
    waves : tuple[ElasticWave, ...]
        This staining's cut deformation; empty for the reference cut.
    """

    reference_mpp_um: float
    mpp_um: float
    centre_um: tuple[float, float]
    margin_um: float = MARGIN_UM
    placement: Placement = field(default_factory=Placement)
    waves: tuple[ElasticWave, ...] = ()

    def __post_init__(self) -> None:
        # Below slope 1 the cut never folds and the fixed-point inversion converges; 0.5 keeps it fast.
        if sum(wave.max_slope for wave in self.waves) >= 0.5:
            raise ValueError("elastic waves too steep to invert: the sum of 2π·|amplitude|/wavelength must be < 0.5")

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Map ``[N, 2]`` reference level-0 pixels ``(x, y)`` to this condition's level-0 pixels, float64."""
        tissue = np.asarray(xy, dtype=np.float64).reshape(-1, 2) * self.reference_mpp_um - self.margin_um
        section = tissue.copy()
        for _ in range(200):  # contraction by ≥ 2 per step: ~40 steps reach the tolerance
            previous = section
            section = tissue - np.stack(self._displacement_um(section[:, 0], section[:, 1]), axis=1)
            if np.all(np.abs(section - previous) <= _FIXED_POINT_TOLERANCE_UM):
                break
        centre = np.asarray(self.centre_um)
        canvas = self.margin_um + centre + (section - centre) @ self.placement.matrix().T + self.placement.shift_um
        return canvas / self.mpp_um

    def map_points_inverse(self, xy: np.ndarray) -> np.ndarray:
        """Map ``[N, 2]`` level-0 pixels of this condition to reference level-0 pixels, float64 (closed form)."""
        canvas = np.asarray(xy, dtype=np.float64).reshape(-1, 2) * self.mpp_um
        tissue_x, tissue_y = self.tissue_um(canvas[:, 0], canvas[:, 1])
        return (np.stack([tissue_x, tissue_y], axis=1) + self.margin_um) / self.reference_mpp_um

    def tissue_um(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tissue point shown at canvas point ``(x_um, y_um)``; broadcasts, keeps float32 inputs float32."""
        inverse = np.linalg.inv(self.placement.matrix())
        (centre_x, centre_y), (shift_x, shift_y) = self.centre_um, self.placement.shift_um
        offset_x = x_um - (self.margin_um + centre_x + shift_x)
        offset_y = y_um - (self.margin_um + centre_y + shift_y)
        # Python floats, not numpy float64 scalars, so a float32 render grid stays float32.
        section_x = float(inverse[0, 0]) * offset_x + float(inverse[0, 1]) * offset_y + centre_x
        section_y = float(inverse[1, 0]) * offset_x + float(inverse[1, 1]) * offset_y + centre_y
        push_x, push_y = self._displacement_um(section_x, section_y)
        return section_x + push_x, section_y + push_y

    def _displacement_um(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``d(s)`` at section points ``(x_um, y_um)`` of one shape."""
        dx, dy = np.zeros_like(x_um), np.zeros_like(y_um)
        for wave in self.waves:
            angle = np.deg2rad(wave.direction_deg)
            k_x, k_y = (float(v) * 2 * np.pi / wave.wavelength_um for v in (np.cos(angle), np.sin(angle)))
            sine = np.sin(k_x * x_um + k_y * y_um + wave.phase_rad)
            dx += wave.amplitude_um[0] * sine
            dy += wave.amplitude_um[1] * sine
        return dx, dy

    def save(self, path: Path | str) -> None:
        """Write the parameters as indented JSON, with a line saying what they map."""
        record = {"maps": "reference level-0 px -> condition level-0 px; see registration.synthetic.GroundTruth"}
        Path(path).write_text(json.dumps(record | asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> GroundTruth:
        record = json.loads(Path(path).read_text())
        placement = record["placement"]
        return cls(
            reference_mpp_um=record["reference_mpp_um"],
            mpp_um=record["mpp_um"],
            centre_um=tuple(record["centre_um"]),
            margin_um=record["margin_um"],
            placement=Placement(placement["rotation_deg"], placement["scale"], tuple(placement["shift_um"])),
            waves=tuple(
                ElasticWave(tuple(w["amplitude_um"]), w["direction_deg"], w["wavelength_um"], w["phase_rad"])
                for w in record["waves"]
            ),
        )
