"""What every flow command line shares: a Prefect API, quiet Dask logs, and exit code 2 for user errors.

Only the standard library and :mod:`flows.prefect_api` are imported before
the temporary Prefect server is launched, so that its start-up overlaps the
import of the flow module.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from flows.prefect_api import PrefectServerError, prefect_api


def job_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    model: type,
    flags: Mapping[str, str],
    flow_module: str,
    run: Callable[[Any, argparse.Namespace], None],
    check: Callable[[Any], None] | None = None,
    progress: bool = True,
    preset: Mapping[str, Any] | None = None,
    prepare: Callable[[Any], AbstractContextManager[None]] | None = None,
) -> int:
    """Parse a job's command line into its config, check it, then run it under Prefect; the process exit code.

    Everything up to ``check`` imports neither Prefect, torch nor Dask: a
    typo, a missing path or a store made with other parameters answers in
    one line and exit code 2 before any server starts. ``prepare(job)``, when
    given, is entered next, before Prefect loads, to start what the run needs
    meanwhile (a local Dask cluster), and left once the run is over.
    """
    from flows.config_loader import ConfigError, config_from_args

    args = job_parser(prog, description, model, flags, progress).parse_intermixed_args(argv)
    name = prog.split()[-1]
    try:
        job = config_from_args(model, args, flags, preset)
        if check is not None:
            check(job)
    except (ConfigError, UserInputError) as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    with prepare(job) if prepare else contextlib.nullcontext():
        return run_flow_command(prog, flow_module, lambda: run(job, args))


def job_parser(
    prog: str, description: str, model: type, flags: Mapping[str, str], progress: bool = True
) -> argparse.ArgumentParser:
    """The command line of a job: derived from its config model, plus ``--no-progress`` where there is a bar."""
    from flows.config_loader import add_config_arguments

    parser = _OneLineParser(prog=prog, description=description)
    add_config_arguments(parser, model, flags)
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


class _OneLineParser(argparse.ArgumentParser):
    """Answers a wrong option with one line, not the usage of every option before it."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog.split()[-1]}: {message} (see --help)\n")


class UserInputError(ValueError):
    """A job's input that the user can fix (a missing path, a store made with other parameters)."""


def run_flow_command(prog: str, flow_module: str, run: Callable[[], object]) -> int:
    """Call ``run`` (which imports and runs a flow) under a Prefect API; return the process exit code.

    0 when the run completed, even if items failed (they are in the store's
    records and the summary); 2 when the run itself could not happen: a bad
    input list or layout, a store made with other parameters or in use, an
    unusable reference slide, no Prefect API. The message goes to stderr.
    """
    name = prog.split()[-1]
    # At exit the interpreter's last garbage collection walks every object Prefect, pydantic and Dask
    # made: 0.6 s idle, 2.5-3 s under load, for a process about to end. Frozen objects are left out.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    # SIGTERM (a scheduler's cancel, a plain `kill`) would end the process on the spot; as SystemExit it
    # unwinds like Ctrl-C: the run lock is released and the temporary server stopped on the way out.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with prefect_api(while_starting=lambda: importlib.import_module(flow_module)):
            import yaml

            from flows.runners import quiet_dask_logging
            from storage.tile_store import StoreError
            from tiling.errors import SlideError

            quiet_dask_logging()
            user_errors = (StoreError, SlideError, FileNotFoundError, ValueError, yaml.YAMLError)
            _hide_tracebacks_of(user_errors)
            try:
                run()
            except user_errors as error:
                print(f"{name}: {error}", file=sys.stderr)
                return 2
    except PrefectServerError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class _WithoutTraceback(logging.Filter):
    """Drops the stack from log records of the given exception types; the message stays."""

    def __init__(self, user_errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.user_errors = user_errors

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.user_errors):
            record.exc_info, record.exc_text = None, None
        return True


def _hide_tracebacks_of(user_errors: tuple[type[BaseException], ...]) -> None:
    """Keep Prefect's one-line report of a flow or task that failed on a user error, without its traceback.

    The engine logs every exception with its stack; for a bad input the stack says nothing the
    message does not, and buries the message the command prints last.
    """
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _WithoutTraceback) for f in logger.filters):
            logger.addFilter(_WithoutTraceback(user_errors))


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
