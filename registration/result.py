"""What a registration produced: the transform, how good it is, and how to map points with it.

Points are level-0 pixel coordinates ``(x, y)``: continuous, so ``(x, y) *
mpp_um`` is the point in µm from the slide's top-left corner. The transform
itself works in µm, so slides of different mpp map directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np

from registration.elastix import (
    ParameterMap,
    linked,
    read_parameter_file,
    transform_file_name,
    transform_points_um,
    write_parameter_file,
)
from registration.quality import RegistrationQuality

_JSON = "registration.json"
_QC_PNG = "qc.png"


@dataclass(frozen=True)
class RegistrationResult:
    """A moving slide aligned to a fixed slide.

    Attributes
    ----------
    fixed_path, moving_path : Path
        The slides.
    fixed_mpp_um, moving_mpp_um : float
        Level-0 µm per pixel of each slide.
    fixed_dimensions_level0, moving_dimensions_level0 : tuple[int, int]
        Level-0 ``(width, height)`` of each slide, pixels.
    view_mpp_um : float
        Requested µm/px of the registered views.
    fixed_view_spacing_um, moving_view_spacing_um : tuple[float, float]
        Effective ``(x, y)`` µm/px of the views actually registered.
    transform_maps : tuple[ParameterMap, ...]
        Elastix transform parameter maps, chained in order, taking a fixed
        point (µm) to the moving slide (µm).
    quality : RegistrationQuality
        Agreement before and after registration.
    config : dict
        The :class:`~registration.config.RegistrationConfig` used, as a dict.
    qc_png : bytes or None
        The QC picture (PNG) of the pair.
    """

    fixed_path: Path
    moving_path: Path
    fixed_mpp_um: float
    moving_mpp_um: float
    fixed_dimensions_level0: tuple[int, int]
    moving_dimensions_level0: tuple[int, int]
    view_mpp_um: float
    fixed_view_spacing_um: tuple[float, float]
    moving_view_spacing_um: tuple[float, float]
    transform_maps: tuple[ParameterMap, ...]
    quality: RegistrationQuality
    config: dict[str, object] = field(default_factory=dict)
    qc_png: bytes | None = field(default=None, repr=False, compare=False)

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Map ``[N, 2]`` fixed level-0 pixels ``(x, y)`` to moving level-0 pixels, float64."""
        xy_um = np.asarray(xy, dtype=np.float64).reshape(-1, 2) * self.fixed_mpp_um
        return transform_points_um(self.transform_maps, xy_um) / self.moving_mpp_um

    def _affine_approximation(self) -> tuple[np.ndarray, np.ndarray]:
        """Least-squares ``A [2, 2], b [2]`` with ``map_points(p) ≈ p @ A.T + b`` over the fixed slide."""
        width, height = self.fixed_dimensions_level0
        grid = np.stack(np.meshgrid(np.linspace(0, width, 9), np.linspace(0, height, 9)), axis=-1).reshape(-1, 2)
        design = np.hstack([grid, np.ones((len(grid), 1))])
        solution, *_ = np.linalg.lstsq(design, self.map_points(grid), rcond=None)
        return solution[:2].T, solution[2]

    def map_points_inverse(self, xy: np.ndarray, tolerance_px: float = 0.05, max_iterations: int = 30) -> np.ndarray:
        """Map ``[N, 2]`` moving level-0 pixels back to fixed level-0 pixels, float64.

        Elastix transforms have no closed-form inverse, so each point is found
        by Newton-like steps with the transform's global affine part as the
        Jacobian. A point that :meth:`map_points` does not bring within
        ``tolerance_px`` (moving level-0 px) of the given one after
        ``max_iterations`` is ``NaN``: the transform folds there, or no fixed
        point maps there.
        """
        target = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        matrix, offset = self._affine_approximation()
        inverse = np.linalg.inv(matrix)
        points = (target - offset) @ inverse.T
        for _ in range(max_iterations):
            residual = self.map_points(points) - target
            if np.all(np.linalg.norm(residual, axis=1) <= tolerance_px):
                return points
            points = points - residual @ inverse.T
        converged = np.linalg.norm(self.map_points(points) - target, axis=1) <= tolerance_px
        return np.where(converged[:, None], points, np.nan)

    def save(self, folder: Path | str) -> Path:
        """Write the transform as elastix text files, a ``registration.json`` and ``qc.png`` into ``folder``.

        ``TransformParameters.<i>.txt`` name their predecessor as initial
        transform, so transformix given the last file, run inside ``folder``,
        applies the whole chain (fixed µm → moving µm).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = [transform_file_name(i) for i in range(len(self.transform_maps))]
        for name, parameter_map in zip(names, linked(self.transform_maps), strict=True):
            write_parameter_file(parameter_map, folder / name)
        record = {
            "software": {"distillpath": version("distillpath"), "itk-elastix": version("itk-elastix")},
            "fixed_path": str(self.fixed_path),
            "moving_path": str(self.moving_path),
            "fixed_mpp_um": self.fixed_mpp_um,
            "moving_mpp_um": self.moving_mpp_um,
            "fixed_dimensions_level0": list(self.fixed_dimensions_level0),
            "moving_dimensions_level0": list(self.moving_dimensions_level0),
            "view_mpp_um": {"requested": self.view_mpp_um},
            "fixed_view_spacing_um": list(self.fixed_view_spacing_um),
            "moving_view_spacing_um": list(self.moving_view_spacing_um),
            "transform_files": names,
            "quality": self.quality.as_dict(),
            "config": self.config,
        }
        (folder / _JSON).write_text(json.dumps(record, indent=2) + "\n")
        if self.qc_png is not None:
            (folder / _QC_PNG).write_bytes(self.qc_png)
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> RegistrationResult:
        """Read a result written by :meth:`save`."""
        folder = Path(folder)
        record = json.loads((folder / _JSON).read_text())
        maps = tuple(read_parameter_file(folder / name) for name in record["transform_files"])
        qc = folder / _QC_PNG
        return cls(
            fixed_path=Path(record["fixed_path"]),
            moving_path=Path(record["moving_path"]),
            fixed_mpp_um=record["fixed_mpp_um"],
            moving_mpp_um=record["moving_mpp_um"],
            fixed_dimensions_level0=tuple(record["fixed_dimensions_level0"]),
            moving_dimensions_level0=tuple(record["moving_dimensions_level0"]),
            view_mpp_um=record["view_mpp_um"]["requested"],
            fixed_view_spacing_um=tuple(record["fixed_view_spacing_um"]),
            moving_view_spacing_um=tuple(record["moving_view_spacing_um"]),
            transform_maps=maps,
            quality=RegistrationQuality(**record["quality"]),
            config=record["config"],
            qc_png=qc.read_bytes() if qc.exists() else None,
        )
