"""Where the tiling command's fixed cost goes: a timeline of each step from launch, for one or more code trees.

Run it from the repository root, after ``benchmarks/tiling.py --quick`` built its slides::

    .venv/bin/python benchmarks/tiling_fixed_cost.py                       # this tree, running server, 3 rounds
    .venv/bin/python benchmarks/tiling_fixed_cost.py --tree base=/tmp/base --temporary

Each round runs ``python -m flows.tile_tcga --workers 2`` on the quick benchmark's 8 small slides
once per tree, interleaved (A B A B …), so that trees compared met the same load. The command
runs from its tree's root, with ``benchmarks/startup_trace`` on ``PYTHONPATH``: its
``sitecustomize`` notes when each step began and ended (imports, the cluster's start, the
temporary server, the flow run's creation, the first submission, …), without changing what
runs. The first slide's start and the last slide's finish come from the store, as in
``benchmarks/tiling.py``; the fixed cost is the same start-up plus exit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tiling_measures import REPO, finish_times

from flows.prefect_api import TemporaryPrefectServer

TRACE = REPO / "benchmarks" / "startup_trace"


def _launch_time(pid: int) -> float:
    """Unix time at which process ``pid`` started (from /proc: clock ticks since boot)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:5] == "btime")
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def traced_run(tree: Path, slides: Path, store: Path, api_url: str | None) -> tuple[list[tuple[float, str]], float]:
    """Run the command from ``tree``; its steps as ``(seconds from launch, step)`` and the fixed cost."""
    with tempfile.NamedTemporaryFile("r", suffix=".trace") as trace, tempfile.TemporaryFile() as log:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env |= {"PYTHONPATH": f"{TRACE}{os.pathsep}{tree}", "DISTILLPATH_STARTUP_TRACE": trace.name}
        if api_url:
            env["PREFECT_API_URL"] = api_url
        command = [sys.executable, "-m", "flows.tile_tcga", "--slides", str(slides), "--out", str(store)]
        command += ["--workers", "2", "--no-progress"]
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        launched = _launch_time(process.pid)
        process.wait()  # the command's own exit, as benchmarks/tiling.py times it (not its children's)
        exited = time.time()
        log.seek(0)
        output = log.read().decode(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(f"{tree}: exit {process.returncode}\n{output[-3000:]}")
        marks = (line.split(" ", 2) for line in trace.read().splitlines())
        steps = [(float(t) - launched, step) for t, _, step in marks]
    finished = finish_times(store)
    first_start = min(finish - seconds for finish, _, seconds in finished) - launched
    first_finish, last_finish = finished[0][0] - launched, finished[-1][0] - launched
    steps += [(first_start, "first slide started (store)"), (first_finish, "first slide finished (store)")]
    steps += [(last_finish, "last slide finished (store)"), (exited - launched, "process exited")]
    warnings = sorted({line for line in output.splitlines() if "already in use" in line})
    steps += [(exited - launched, f"output: {line.strip()}") for line in warnings]
    return sorted(steps), first_start + (exited - launched - last_finish)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a code tree to time (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temporary", action="store_true", help="each command starts its own temporary server")
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".work")
    parser.add_argument("--quiet", action="store_true", help="print the fixed costs only, not each timeline")
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    trees = dict(item.split("=", 1) for item in args.tree) or {"this": str(REPO)}
    slides = args.workdir / "large-4096-x8"
    if not slides.is_dir():
        raise SystemExit(f"{slides} is missing: run benchmarks/tiling.py --quick once first")
    server = None if args.temporary else TemporaryPrefectServer()
    api_url = server.wait_until_ready() if server else None
    fixed: dict[str, list[float]] = {name: [] for name in trees}
    try:
        if api_url:  # a running server has answered each kind of request before: its first answers are slow
            store = args.workdir / "stores" / "fixed-cost-warm-up.zarr"
            subprocess.run(["rm", "-rf", str(store)], check=True)
            print(f"warm-up run (not counted): fixed cost {traced_run(REPO, slides, store, api_url)[1]:.2f} s")
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                load = os.getloadavg()[0]
                store = args.workdir / "stores" / f"fixed-cost-{name}.zarr"
                subprocess.run(["rm", "-rf", str(store)], check=True)
                steps, cost = traced_run(Path(tree).resolve(), slides, store, api_url)
                fixed[name].append(cost)
                print(f"\n## round {round_ + 1}, {name}: fixed cost {cost:.2f} s (load average {load:.1f})")
                if not args.quiet:
                    print("\n".join(f"{seconds:7.2f}  {step}" for seconds, step in steps))
    finally:
        if server:
            server.stop()
    server_kind = "temporary server" if args.temporary else "running server"
    print(
        f"\nfixed cost, {server_kind} (s): "
        + "; ".join(
            f"{name} median {statistics.median(v):.2f} ({', '.join(f'{x:.2f}' for x in v)})"
            for name, v in fixed.items()
        )
    )


if __name__ == "__main__":
    main()
