"""How long each command takes to answer a user mistake: wall and CPU seconds to its one-line exit 2.

Run it from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/typo_exits.py [--repeats 5]

Each command gets a mistake it must catch before Prefect starts (a missing
input path; distill an unknown key; serve an unknown section), with
``PREFECT_API_URL`` pointing at a port where nothing listens. Per command it
prints the median wall and CPU (user + sys) seconds of the child process and
its one line. The goal (issue 15) is under 2 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "tile": ["flows.tile_tcga", "--slides", "{tmp}/missing", "--out", "{tmp}/o.zarr"],
    "register-plism": ["flows.register_plism", "--slides", "{tmp}/missing", "--out", "{tmp}/o.zarr"],
    "extract-plism": ["flows.extract_plism", "--slides", "{tmp}/missing", "--out", "{tmp}/o.zarr"],
    "embed": ["flows.embed", "--tiles", "{tmp}/missing", "--out", "{tmp}/e.zarr", "--model", "h0-mini"],
    "distill": ["flows.distill", "--tiles", "{tmp}", "--out", "{tmp}/run", "train.iteration=3"],
    "robustness": ["flows.robustness", "--embeddings", "{tmp}/missing", "--out", "{tmp}/r"],
    "evaluate": [
        "flows.evaluate",
        "--embeddings",
        "{tmp}/missing",
        "--labels",
        "{tmp}/l",
        "--out",
        "{tmp}/p",
        "--task",
        "regression",
    ],
    "serve": ["flows.serve", "tile.cron=x"],
    "distillpath tile": ["flows.distillpath", "tile", "--slides", "{tmp}/missing", "--out", "{tmp}/o.zarr"],
}


def _once(argv: list[str]) -> tuple[float, float, str]:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "PYTHONPATH": str(REPO)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 2:
        raise SystemExit(f"{argv[0]} exited {done.returncode}: {done.stderr[-500:]}")
    return wall, cpu, done.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in COMMANDS.items():
            runs = [_once([a.format(tmp=tmp) for a in argv]) for _ in range(repeats)]
            wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            print(f"{name:<18} wall {wall:5.2f} s  cpu {cpu:5.2f} s  | {runs[-1][2][:80]}")


if __name__ == "__main__":
    main()
