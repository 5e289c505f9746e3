"""Exceptions for slides that cannot be tiled.

Each names the slide it concerns, so a failure recorded in a run manifest of
thousands of slides says what happened to which file. A ``SlideError`` is
permanent (retrying cannot help); any other ``OSError`` during a run is treated
as transient I/O and retried.
"""

from __future__ import annotations

from pathlib import Path


class SlideError(Exception):
    """A slide cannot be tiled; the message names the slide and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnreadableSlideError(SlideError):
    """No backend can open the file (corrupt, truncated, empty or not a slide)."""


class MissingMppError(SlideError):
    """The slide records no pixel size and the user gave no override."""


class ResolutionTooLowError(SlideError):
    """The finest level is coarser than the requested mpp and upsampling is not allowed."""


class SlideReadError(SlideError):
    """Pixels could not be decoded from a slide that did open (truncated or corrupt tiles)."""


class InvalidSlideIdError(SlideError):
    """A slide id is unsafe as a store path or clashes with another slide's id."""
