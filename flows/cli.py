"""What every flow command line shares: a Prefect API, quiet Dask logs, and exit code 2 for user errors.

Only the standard library and :mod:`flows.prefect_api` are imported before
the temporary Prefect server is launched, so that its start-up overlaps the
import of the flow module.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable

from flows.prefect_api import PrefectServerError, prefect_api


def run_flow_command(prog: str, flow_module: str, run: Callable[[], object]) -> int:
    """Call ``run`` (which imports and runs a flow) under a Prefect API; return the process exit code.

    0 when the run completed, even if items failed (they are in the store's
    records and the summary); 2 when the run itself could not happen: a bad
    input list or layout, a store made with other parameters or in use, an
    unusable reference slide, no Prefect API. The message goes to stderr.
    """
    name = prog.split()[-1]
    # SIGTERM (a scheduler's cancel, a plain `kill`) would end the process on the spot; as SystemExit it
    # unwinds like Ctrl-C: the run lock is released and the temporary server stopped on the way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with prefect_api(while_starting=lambda: importlib.import_module(flow_module)):
            from flows.runners import quiet_dask_logging
            from storage.tile_store import StoreError
            from tiling.errors import SlideError

            quiet_dask_logging()
            try:
                run()
            except (StoreError, SlideError, FileNotFoundError, ValueError) as error:
                print(f"{name}: {error}", file=sys.stderr)
                return 2
    except PrefectServerError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
