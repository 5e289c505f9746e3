"""Slide-to-slide registration with elastix, in physical units (µm).

``register_slides(fixed_path, moving_path, **options)`` aligns a moving slide
to a fixed one and returns a :class:`RegistrationResult` whose
``map_points`` takes fixed level-0 pixels to moving level-0 pixels.
"""

from registration.config import RegistrationConfig
from registration.errors import RegistrationError
from registration.register import register_slides
from registration.result import RegistrationResult

__all__ = ["RegistrationConfig", "RegistrationError", "RegistrationResult", "register_slides"]
