"""Checks of a job's inputs that run before Prefect starts, each failing with one line the user can act on."""

from __future__ import annotations

from pathlib import Path

from flows.cli import UserInputError


def existing_path(path: str, flag: str) -> Path:
    """``path`` as a ``Path``; a :class:`UserInputError` naming ``flag`` when nothing is there."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise UserInputError(f"{flag} {path}: no such file or folder")
    return resolved


def store_accepts(store_class: type, root: str, parameters: dict, overwrite: bool) -> None:
    """Refuse at once a store made with other parameters, naming the fields that differ."""
    from storage.tile_store import StoreError

    try:
        store_class.check_can_open(root, parameters, overwrite=overwrite)
    except StoreError as error:
        raise UserInputError(str(error)) from None
