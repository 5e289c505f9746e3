"""Run elastix and transformix on views in µm, and read or write their parameter maps.

Parameter maps are kept as plain ``dict[str, list[str]]`` so results pickle
and compare like any Python value; ITK objects are built only for a call.
``itk`` is imported inside the functions because loading it takes 10-15 s,
which a process that never registers should not pay.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ParameterMap = dict[str, list[str]]

PARAMETERS_DIR = Path(__file__).parent / "parameters"


_ITK_LOCK = threading.Lock()


def loaded_itk():
    """The ``itk`` module with its elastix classes loaded.

    ``itk`` loads its classes lazily on first attribute access, and two
    threads doing so at once can see a half-initialised module ("module 'itk'
    has no attribute 'ParameterObject'"): the first use is serialised here.
    """
    with _ITK_LOCK:
        import itk

        for name in (
            "ParameterObject",
            "ElastixRegistrationMethod",
            "TransformixFilter",
            "Image",
            "F",
            "image_from_array",
            "array_from_image",
        ):
            getattr(itk, name)  # forces the lazy load while no other thread races it
    return itk


def transform_file_name(index: int) -> str:
    """Name of the ``index``-th transform file of a chain, as the elastix program names them."""
    return f"TransformParameters.{index}.txt"


def linked(transform_maps: Sequence[ParameterMap]) -> list[ParameterMap]:
    """The maps with each one naming its predecessor's file (:func:`transform_file_name`) as initial transform.

    Elastix fills this field with paths to its own temporary folder; the file
    names make a saved chain usable by ``transformix -tp`` from its folder.
    A chain passed whole to transformix ignores them.
    """
    return [
        {**m, "InitialTransformParameterFileName": [transform_file_name(i - 1) if i else "NoInitialTransform"]}
        for i, m in enumerate(transform_maps)
    ]


def read_parameter_file(path: Path | str) -> ParameterMap:
    """One elastix parameter file (text) as a map."""
    itk = loaded_itk()

    parameter_object = itk.ParameterObject.New()
    parameter_object.ReadParameterFile(str(path))
    return {key: list(values) for key, values in dict(parameter_object.GetParameterMap(0)).items()}


def write_parameter_file(parameter_map: ParameterMap, path: Path | str) -> None:
    """Write one map in elastix's text format, readable by the elastix and transformix programs."""
    itk = loaded_itk()

    itk.ParameterObject.WriteParameterFile(parameter_map, str(path))


def stage_map(stage: str, bspline_grid_spacing_um: float) -> ParameterMap:
    """The committed parameter file of ``stage`` (``rigid``, ``affine`` or ``bspline``)."""
    parameter_map = read_parameter_file(PARAMETERS_DIR / f"{stage}.txt")
    if stage == "bspline":
        parameter_map["FinalGridSpacingInPhysicalUnits"] = [repr(float(bspline_grid_spacing_um))]
    return parameter_map


def uses_bending_energy(parameter_maps: Sequence[ParameterMap]) -> bool:
    """Whether any map carries the bending-energy penalty (itk-elastix's default B-spline map; not ours), with
    which threads must not be set (ITKElastix #160).
    """
    return any("TransformBendingEnergyPenalty" in m.get("Metric", []) for m in parameter_maps)


def _parameter_object(parameter_maps: Sequence[ParameterMap]):
    itk = loaded_itk()

    parameter_object = itk.ParameterObject.New()
    for parameter_map in parameter_maps:
        parameter_object.AddParameterMap(parameter_map)
    return parameter_object


def itk_image(array: np.ndarray, spacing_um: tuple[float, float]):
    """An ITK image of a ``[H, W]`` view whose physical coordinates are µm from the slide's top-left corner.

    ITK indexes pixels (x, y) = (col, row), the transpose of numpy's
    ``[row, col]``; ``image_from_array`` handles that. The origin is the
    centre of the first pixel, half a pixel from the corner.
    """
    itk = loaded_itk()

    image = itk.image_from_array(np.ascontiguousarray(array))
    image.SetSpacing([float(s) for s in spacing_um])
    image.SetOrigin([float(s) / 2 for s in spacing_um])
    return image


def _log_tail(folder: Path, lines: int = 15) -> str:
    logs = sorted(folder.glob("*.log"))
    return "\n".join(logs[0].read_text(errors="replace").splitlines()[-lines:]) if logs else "(no elastix log)"


def run_elastix(
    fixed,
    moving,
    fixed_mask,
    stage_maps: Sequence[ParameterMap],
    initial_map: ParameterMap | None,
    number_of_threads: int | None = None,
) -> list[ParameterMap]:
    """Register ITK image ``moving`` to ``fixed``; return every transform map, ``initial_map`` first.

    The maps chain in order (see :func:`linked`) and take a fixed-view point
    (µm) to the moving view (µm). ``fixed_mask`` (an ITK uint8 image on the fixed grid) limits
    where the metric is sampled; ``None`` samples everywhere. ``initial_map``
    ``None`` starts from the identity and leaves it out of the returned maps.

    Raises
    ------
    RuntimeError
        When elastix fails; the message ends with the tail of its log.
    """
    itk = loaded_itk()

    with tempfile.TemporaryDirectory(prefix="elastix-") as log_dir:
        method = itk.ElastixRegistrationMethod.New(fixed, moving)
        method.SetParameterObject(_parameter_object(stage_maps))
        if initial_map is not None:
            method.SetInitialTransformParameterObject(_parameter_object([initial_map]))
        if fixed_mask is not None:
            method.SetFixedMask(fixed_mask)
        method.SetOutputDirectory(log_dir)
        method.SetLogToConsole(False)
        method.SetLogToFile(True)
        if number_of_threads is not None and not uses_bending_energy(stage_maps):
            method.SetNumberOfThreads(number_of_threads)
        try:
            method.UpdateLargestPossibleRegion()
        except RuntimeError as error:
            raise RuntimeError(f"elastix failed: {error}\n{_log_tail(Path(log_dir))}") from error
        result = method.GetTransformParameterObject()
        return linked(
            [
                {key: list(values) for key, values in dict(result.GetParameterMap(i)).items()}
                for i in range(result.GetNumberOfParameterMaps())
            ]
        )


def register_patch_um(
    fixed: np.ndarray,
    moving: np.ndarray,
    spacing_um: float,
    transform: str = "translation",
    number_of_threads: int | None = None,
) -> np.ndarray:
    """``(x, y)`` µm shift ``t`` such that ``fixed`` at its centre ``c`` shows what ``moving`` shows at ``c + t``.

    Both are ``[H, W]`` intensities on one grid of ``spacing_um`` µm/px, such as a
    fixed patch and the moving slide resampled onto it; the committed
    ``translation.txt`` stage finds the shift, so no other engine is involved.
    ``transform="affine"`` fits an affine map on the same stage instead and
    returns its shift at the centre: where the misalignment varies across the
    patch, a translation gives its average over the patch's texture, which
    sits off-centre when the tissue does.

    Raises
    ------
    RuntimeError
        When elastix fails; the message ends with the tail of its log.
    """
    spacing = (float(spacing_um), float(spacing_um))
    stage = read_parameter_file(PARAMETERS_DIR / "translation.txt")
    centre = np.array([moving.shape[1], moving.shape[0]], dtype=np.float64) * spacing_um / 2
    if transform == "affine":
        stage["Transform"] = ["AffineTransform"]
        stage["AutomaticScalesEstimation"] = ["true"]
        stage["CenterOfRotationPoint"] = [repr(float(v)) for v in centre]
    elif transform != "translation":
        raise ValueError(f"unknown patch transform {transform!r}: expected 'translation' or 'affine'")
    maps = run_elastix(
        itk_image(fixed.astype(np.float32), spacing),
        itk_image(moving.astype(np.float32), spacing),
        None,
        [stage],
        None,
        number_of_threads,
    )
    parameters = np.array([float(value) for value in maps[-1]["TransformParameters"]], dtype=np.float64)
    if transform == "translation":
        return parameters
    # Elastix affine: p -> A (p - c) + c + t with c its CenterOfRotationPoint, so the shift at c is t.
    rotation_centre = np.array([float(v) for v in maps[-1]["CenterOfRotationPoint"]])
    matrix = parameters[:4].reshape(2, 2)
    return matrix @ (centre - rotation_centre) + rotation_centre + parameters[4:] - centre


def _transformix(transform_maps: Sequence[ParameterMap]):
    """A transformix filter for the chained maps; points and fields never read the moving image, so it is 1 px."""
    itk = loaded_itk()

    transformix = itk.TransformixFilter[itk.Image[itk.F, 2]].New()
    transformix.SetMovingImage(itk_image(np.zeros((1, 1), np.float32), (1.0, 1.0)))
    transformix.SetTransformParameterObject(_parameter_object(transform_maps))
    transformix.SetLogToConsole(False)
    return transformix


def transform_points_um(transform_maps: Sequence[ParameterMap], xy_um: np.ndarray) -> np.ndarray:
    """Map ``[N, 2]`` fixed-slide points (µm) through the chained maps to the moving slide (µm), float64.

    Points go through a point-set file (about 6 µs a point, to 1e-6 µm), not
    through ``SetInputMesh``: after one mesh transform, every later
    registration in the process ran 2-8x slower (itk-elastix 0.25.4).
    """
    points = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return points.copy()
    with tempfile.TemporaryDirectory(prefix="transformix-") as folder:
        input_path = Path(folder) / "fixed-points.txt"
        np.savetxt(input_path, points, fmt="%.6f", header=f"point\n{len(points)}", comments="")
        transformix = _transformix(transform_maps)
        transformix.SetFixedPointSetFileName(str(input_path))
        transformix.SetOutputDirectory(folder)
        transformix.Update()
        text = (Path(folder) / "outputpoints.txt").read_text()
    moved = re.findall(r"OutputPoint = \[ ([^\]]+) \]", text)
    return np.array([row.split() for row in moved], dtype=np.float64).reshape(-1, 2)


def deformation_um(
    transform_maps: Sequence[ParameterMap], shape: tuple[int, int], spacing_um: tuple[float, float]
) -> np.ndarray:
    """``[H, W, 2]`` (x, y) displacement (µm) from each pixel centre of a fixed grid to its moving point.

    The grid has ``[H, W]`` pixels of ``spacing_um`` from the fixed slide's
    corner, whatever grid the maps were registered on (transformix lays out
    its output by the maps' ``Size``, ``Spacing`` and ``Origin``, which are
    replaced): checks made on a grid coarser than a fine registration view
    need only its points. One transformix call. Transformix also writes the
    field to its output folder (the working directory unless told), so it is
    given a temporary one.
    """
    itk = loaded_itk()

    grid = {
        "Size": [str(shape[1]), str(shape[0])],
        "Index": ["0", "0"],
        "Spacing": [repr(float(v)) for v in spacing_um],
        "Origin": [repr(float(v) / 2) for v in spacing_um],
    }
    transform_maps = [{**m, **grid} for m in transform_maps]
    with tempfile.TemporaryDirectory(prefix="transformix-") as folder:
        transformix = _transformix(transform_maps)
        transformix.ComputeDeformationFieldOn()
        transformix.SetOutputDirectory(folder)
        transformix.Update()
        return np.asarray(itk.array_from_image(transformix.GetOutputDeformationField()), dtype=np.float64)
