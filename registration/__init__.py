"""Slide-to-slide registration with elastix, in physical units (µm).

``register_slides(fixed_path, moving_path, config)`` aligns a moving slide
to a fixed one and returns a :class:`RegistrationResult` whose
``map_points`` takes fixed level-0 pixels to moving level-0 pixels.

The names below are imported on first use: reading a job's
``RegistrationConfig`` (every command line, before anything starts) does not
load itk-elastix and OpenCV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the types, for the checker; at run time __getattr__ imports them
    from registration.config import RefinementConfig, RegistrationConfig
    from registration.errors import RegistrationError
    from registration.register import register_slides
    from registration.result import RegistrationResult

_LAZY = {
    "RefinementConfig": "registration.config",
    "RegistrationConfig": "registration.config",
    "RegistrationError": "registration.errors",
    "RegistrationResult": "registration.result",
    "register_slides": "registration.register",
}
__all__ = ["RefinementConfig", "RegistrationConfig", "RegistrationError", "RegistrationResult", "register_slides"]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'registration' has no attribute {name!r}")
