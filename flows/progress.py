"""The terminal's progress bar: one bar with the log lines printed above it, and a plain line when idle."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


@contextmanager
def progress_bar(total: int, unit: str, *, enabled: bool, already_done: int = 0) -> Iterator[tqdm]:
    """A tqdm bar on stderr while console logging goes through ``tqdm.write`` (lines above the bar, never
    through it); with nothing to do, one line saying why instead of an empty bar (``0slide [00:00, ?slide/s]``).
    """
    if total == 0:
        if enabled:
            print(
                f"nothing to do: {already_done} {unit}{'s' if already_done != 1 else ''} already complete",
                file=sys.stderr,
            )
        with tqdm(disable=True) as idle:
            yield idle
        return
    with logging_redirect_tqdm(), tqdm(total=total, unit=unit, disable=not enabled, file=sys.stderr) as bar:
        yield bar
