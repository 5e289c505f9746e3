"""A coarse rigid alignment that lets elastix start close to the answer.

Elastix's rigid stage only finds rotations within about 20° of its start (a
60° rotation of the CMU sample was not recovered), while consecutive sections
can lie on the glass at any angle. So the moving view's centre of stain mass
is put on the fixed one's, every rotation ``rotation_step_deg`` apart is
tried on coarse views, and the one with the best normalised cross-correlation
becomes elastix's initial transform.
"""

from __future__ import annotations

import numpy as np

from registration.geometry import pixel_centres_um, resize_view, sample_view
from registration.quality import normalised_cross_correlation
from registration.views import SlideView


def _centre_of_mass_um(intensity: np.ndarray, spacing_um: tuple[float, float]) -> np.ndarray:
    weights = intensity.ravel().astype(np.float64)
    return (pixel_centres_um(intensity.shape, spacing_um) * weights[:, None]).sum(axis=0) / weights.sum()


def _rotation(angle_rad: float) -> np.ndarray:
    """``[2, 2]`` rotation of (x, y) points by ``angle_rad``, as ITK's Euler transform applies it."""
    cos, sin = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[cos, -sin], [sin, cos]])


def search_rotation(
    fixed: SlideView, moving: SlideView, mpp_um: float, step_deg: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Best angle (radians) and the fixed and moving centres of mass, ``[2]`` µm each.

    The transform found maps a fixed point ``x`` (µm) to the moving point
    ``R(angle) @ (x - centre_fixed) + centre_moving``.
    """
    fixed_image, fixed_spacing = resize_view(fixed.intensity, fixed.spacing_um, mpp_um)
    moving_image, moving_spacing = resize_view(moving.intensity, moving.spacing_um, mpp_um)
    centre_fixed = _centre_of_mass_um(fixed_image, fixed_spacing)
    centre_moving = _centre_of_mass_um(moving_image, moving_spacing)
    points = pixel_centres_um(fixed_image.shape, fixed_spacing) - centre_fixed
    best_angle, best_score = 0.0, -np.inf
    for angle in np.deg2rad(np.arange(0.0, 360.0, step_deg)):
        moving_um = points @ _rotation(angle).T + centre_moving
        warped = sample_view(moving_image, moving_spacing, moving_um, fixed_image.shape)
        score = normalised_cross_correlation(fixed_image, warped)
        if score > best_score:
            best_angle, best_score = float(angle), score
    return best_angle, centre_fixed, centre_moving


def initial_transform_map(fixed: SlideView, moving: SlideView, mpp_um: float, step_deg: float) -> dict[str, list[str]]:
    """The coarse alignment as an elastix ``EulerTransform`` parameter map on the fixed view's grid (µm)."""
    angle, centre_fixed, centre_moving = search_rotation(fixed, moving, mpp_um, step_deg)
    translation = centre_moving - centre_fixed
    height, width = fixed.intensity.shape
    return {
        "Transform": ["EulerTransform"],
        "NumberOfParameters": ["3"],
        "TransformParameters": [repr(angle), repr(float(translation[0])), repr(float(translation[1]))],
        "CenterOfRotationPoint": [repr(float(centre_fixed[0])), repr(float(centre_fixed[1]))],
        "InitialTransformParameterFileName": ["NoInitialTransform"],
        "HowToCombineTransforms": ["Compose"],
        "FixedImageDimension": ["2"],
        "MovingImageDimension": ["2"],
        "FixedInternalImagePixelType": ["float"],
        "MovingInternalImagePixelType": ["float"],
        "Size": [str(width), str(height)],
        "Index": ["0", "0"],
        "Spacing": [repr(s) for s in fixed.spacing_um],
        "Origin": [repr(s / 2) for s in fixed.spacing_um],
        "Direction": ["1", "0", "0", "1"],
        "UseDirectionCosines": ["true"],
    }
