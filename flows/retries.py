"""Which errors are worth retrying, and a retry loop for work submitted without Prefect task runs.

Imports nothing from Prefect: Dask workers import it with the work they run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from tiling.errors import SlideError

P = ParamSpec("P")
R = TypeVar("R")


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is an I/O hiccup (network file systems, object-store mounts) worth retrying.

    A slide that cannot be read (``SlideError``) fails the same way every
    time, and so does anything else that is not an ``OSError``.
    """
    return isinstance(error, OSError) and not isinstance(error, SlideError)


def retrying(function: Callable[P, R], retries: int, delay_s: float) -> Callable[P, R]:
    """``function``, called again up to ``retries`` times after a transient I/O error, ``delay_s`` apart.

    Any other error, and the last transient one, propagates.
    """

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        failures = 0
        while True:
            try:
                return function(*args, **kwargs)
            except OSError as error:
                if failures == retries or not is_transient(error):
                    raise
            failures += 1
            time.sleep(delay_s)

    return call
