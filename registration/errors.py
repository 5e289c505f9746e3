"""The exception raised when a pair of slides cannot be registered."""

from __future__ import annotations

from pathlib import Path


class RegistrationError(Exception):
    """A moving slide could not be aligned to a fixed slide.

    The message names both files and the reason. ``qc_png`` holds the QC
    picture of the failed pair (PNG bytes) when one could be drawn, so a
    person can see at a glance whether a slide was blank, unrelated or
    simply too different.
    """

    def __init__(
        self, fixed_path: Path | str, moving_path: Path | str, reason: str, qc_png: bytes | None = None
    ) -> None:
        self.fixed_path = Path(fixed_path)
        self.moving_path = Path(moving_path)
        self.reason = reason
        self.qc_png = qc_png
        super().__init__(f"moving {self.moving_path} onto fixed {self.fixed_path}: {reason}")
