"""Checks of a job's inputs that run before Prefect starts, each failing with one line the user can act on."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli import UserInputError

if TYPE_CHECKING:
    from storage.tile_store import RunStore


def existing_path(path: str, flag: str) -> Path:
    """``path`` as a ``Path``; a :class:`UserInputError` naming ``flag`` when nothing is there."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise UserInputError(f"{flag} {path}: no such file or folder")
    return resolved


def store_accepts(
    store_class: type[RunStore], root: str, parameters: dict, overwrite: bool, without_effect: Collection[str] = ()
) -> None:
    """Refuse at once a store made with other parameters, naming the fields that differ."""
    from storage.tile_store import StoreError

    try:
        store_class.check_can_open(root, parameters, overwrite=overwrite, without_effect=without_effect)
    except StoreError as error:
        raise UserInputError(str(error)) from None


# The names of pipeline.models.MODEL_SPECS, known without importing torch (tests/test_job_configs.py compares).
PROJECT_MODELS = ("h-optimus-0", "h0-mini", "tiny-teacher", "tiny-student")


def known_model(name: str, flag: str) -> None:
    """A project model name answers at once; any other name costs importing timm, still before Prefect starts."""
    if name in PROJECT_MODELS:
        return
    import difflib

    close = difflib.get_close_matches(name, PROJECT_MODELS, n=1)
    if close:  # a near miss of a project name is a typo, not a timm model
        raise UserInputError(f"{flag} {name}: unknown model (did you mean {close[0]}?)")
    if name.startswith("hf-hub:"):
        raise UserInputError(f"{flag} {name}: hub names are not accepted; give a local --weights file")
    import timm

    if not timm.is_model(name):
        raise UserInputError(
            f"{flag} {name}: unknown model: not one of {', '.join(PROJECT_MODELS)} nor a timm model name"
        )
