"""Timestamps of the tiling command's start-up and exit steps, for ``benchmarks/tiling_fixed_cost.py``.

Python imports ``sitecustomize`` from ``sys.path`` as it starts; the benchmark puts this folder on
``PYTHONPATH`` and names a file in ``DISTILLPATH_STARTUP_TRACE``. Only the process that finds the
variable traces: it removes the variable at once, so the server, the fork server and the Dask
workers run untouched. Each traced step appends ``<unix time> <thread> <step>`` to the file; the
command's code is the same as without the trace (functions are wrapped as their modules load).
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import os
import sys
import threading
import time

_PATH = os.environ.pop("DISTILLPATH_STARTUP_TRACE", None)

# module -> attributes ("Class.method" or "function") whose calls are timed, begin and end
_WRAP = {
    "flows.cli": ["job_main", "run_flow_command"],
    "flows.runners": ["_start_local_cluster", "make_task_runner", "tasks_on"],
    "flows.prefect_api": [
        "TemporaryPrefectServer.__init__",
        "TemporaryPrefectServer.wait_until_ready",
        "TemporaryPrefectServer.stop",
    ],
    "prefect.flow_engine": [
        "run_flow_sync",
        "FlowRunEngine.create_flow_run",
        "FlowRunEngine.begin_run",
        "FlowRunEngine.setup_run_context",
        "FlowRunEngine.call_flow_fn",
        "FlowRunEngine.handle_success",
    ],
    "prefect_dask.task_runners": ["DaskTaskRunner.__enter__", "DaskTaskRunner.__exit__"],
    "flows.tiling_flow": [
        "open_run",
        "take_over",
        "create_progress_artifact",
        "write_qc_index",
        "create_markdown_artifact",
        "as_completed_bounded",
    ],
    "flows.early_slides": ["_start"],
    "distributed.deploy.spec": ["SpecCluster.close"],
    "prefect.logging.handlers": ["APILogWorker.drain_all"],
}
_IMPORTS = {"prefect", "distributed", "prefect_dask", "flows.tiling_flow", "flows.job_flows", "flows.runners"}


def _mark(step: str) -> None:
    with open(_PATH, "a") as out:  # type: ignore[arg-type]
        out.write(f"{time.time():.4f} {threading.current_thread().name} {step}\n")


def _timed(function, label: str):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        _mark(f"begin {label}")
        try:
            return function(*args, **kwargs)
        finally:
            _mark(f"end {label}")

    return wrapper


def _first_calls(function, label: str, count: int = 2):
    """Marks the first ``count`` calls of the function ``function`` returns (the flow's first submissions)."""
    calls = []

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        inner = function(*args, **kwargs)

        def counted(*a, **k):
            calls.append(None)
            if len(calls) <= count:
                _mark(f"{label} #{len(calls)}")
            return inner(*a, **k)

        return counted

    return wrapper


def _patch(module) -> None:
    for name in _WRAP.get(module.__name__, []):
        owner, _, attribute = name.rpartition(".")
        target = getattr(module, owner) if owner else module
        if hasattr(target, attribute):  # a name a tree does not have is skipped (older trees are timed too)
            setattr(target, attribute, _timed(getattr(target, attribute), f"{module.__name__}.{name}"))
    if module.__name__ == "flows.tiling_flow":
        module.submit_on_flow_runner = _first_calls(module.submit_on_flow_runner, "submit slide")


class _Loader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        timed = module.__name__ in _IMPORTS
        if timed:
            _mark(f"begin import {module.__name__}")
        self.loader.exec_module(module)
        if timed:
            _mark(f"end import {module.__name__}")
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _WRAP and name not in _IMPORTS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


if _PATH:
    _mark("interpreter up (site)")
    atexit.register(_mark, "last atexit handler")  # registered first, so it runs last
    sys.meta_path.insert(0, _Finder())
