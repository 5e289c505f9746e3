"""What it costs to hand a slide to a Dask worker from a Prefect flow, three ways.

Run it from the repository root (against ``PREFECT_API_URL`` if set, else a temporary server)::

    PYTHONPATH=. .venv/bin/python benchmarks/submission.py            # 300 then 900 items per way
    PYTHONPATH=. .venv/bin/python benchmarks/submission.py --quick    # 40 then 120

Each way runs inside one flow on a ``LocalCluster`` of 2 single-threaded
worker processes, through :func:`flows.submission.as_completed_bounded` (a window of
futures, results released as they arrive). The work is a stand-in for
``tile_slide`` that takes the same arguments (a ``SlideSpec``, the store's path,
the ``TilingConfig``), sleeps 5 ms and returns a ``SlideRecord``, so only the
submission machinery is measured:

- **prefect task per slide**: ``task.submit`` of a Prefect task (a task run per slide);
- **prefect task per batch**: one Prefect task run per ``--batch`` slides;
- **plain dask**: ``client.submit`` of the plain function on the flow's Dask client.

Per way it prints the driver's CPU and wall seconds per slide, and the growth of
driver and worker RSS per slide between the first and the last checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts named like the packages (tiling.py): drop it from sys.path, put the repository on it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import psutil  # noqa: E402
from prefect import flow, task  # noqa: E402

from flows.prefect_api import prefect_api  # noqa: E402
from flows.runners import make_task_runner, quiet_dask_logging  # noqa: E402
from flows.submission import as_completed_bounded, dask_client_of_flow, submit_on_flow_runner  # noqa: E402
from storage.manifest import DONE, SlideRecord  # noqa: E402
from tiling.config import TilingConfig  # noqa: E402
from tiling.slide_list import SlideSpec  # noqa: E402

WORK_S = 0.005
WINDOW = 8
KIB = 1024
WAYS = ("plain dask", "prefect task per batch", "prefect task per slide")


def fake_tile(spec: SlideSpec, store_root: str, config: TilingConfig) -> SlideRecord:
    """Stand-in for ``tile_slide``: same arguments and result, 5 ms of work."""
    time.sleep(WORK_S)
    return SlideRecord(slide_id=spec.slide_id, source_path=str(spec.path), status=DONE, n_tiles=7000)


def fake_tile_batch(specs: list[SlideSpec], store_root: str, config: TilingConfig) -> list[SlideRecord]:
    return [fake_tile(spec, store_root, config) for spec in specs]


fake_tile_task = task(fake_tile, name="fake-tile", cache_policy=None, persist_result=False)
fake_tile_batch_task = task(fake_tile_batch, name="fake-tile-batch", cache_policy=None, persist_result=False)


def _worker_rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def _checkpoint(client) -> tuple[float, float, int, int]:
    """Driver CPU s, wall s, driver RSS and summed worker RSS, after a garbage collection everywhere."""
    gc.collect()
    workers = sum(client.run(_worker_rss).values())
    return time.process_time(), time.perf_counter(), psutil.Process().memory_info().rss, workers


def _specs(start: int, stop: int) -> list[SlideSpec]:
    return [SlideSpec(Path(f"/slides/TCGA-{i:06d}.svs"), f"TCGA-{i:06d}") for i in range(start, stop)]


@flow(name="submission-benchmark", persist_result=False)
def measure(way: str, counts: tuple[int, int], batch: int) -> dict:
    """Run ``counts[0]`` items, checkpoint, run up to ``counts[1]``, checkpoint; return per-item costs."""
    client = dask_client_of_flow()
    config = TilingConfig()
    if way == "plain dask":
        run = submit_on_flow_runner(client, fake_tile)
        submit = lambda spec: run(spec, "/store", config)  # noqa: E731
        items = _specs
    elif way == "prefect task per slide":
        submit = lambda spec: fake_tile_task.submit(spec, "/store", config)  # noqa: E731
        items = _specs
    else:
        submit = lambda specs: fake_tile_batch_task.submit(specs, "/store", config)  # noqa: E731
        items = lambda a, b: [_specs(i, min(b, i + batch)) for i in range(a, b, batch)]  # noqa: E731
    list(as_completed_bounded(submit, items(0, 20), WINDOW))  # warm-up: imports, first connections
    points, first_result_s = [], None
    start = 0
    for count in counts:
        points.append(_checkpoint(client))
        started = time.perf_counter()
        for _, future in as_completed_bounded(submit, items(start, count), WINDOW):
            future.result()
            first_result_s = first_result_s or time.perf_counter() - started
        start = count
    points.append(_checkpoint(client))
    (cpu0, wall0, driver0, workers0), (cpu1, wall1, driver1, workers1) = points[1], points[2]
    n = counts[1] - counts[0]
    return {
        "way": way if way != "prefect task per batch" else f"{way} of {batch}",
        "driver_cpu_ms": 1e3 * (cpu1 - cpu0) / n,
        "wall_ms": 1e3 * (wall1 - wall0) / n,
        "driver_kib": (driver1 - driver0) / KIB / n,
        "workers_kib": (workers1 - workers0) / KIB / n,
        "first_result_s": first_result_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs=2, default=(300, 900), help="checkpoints, in items")
    parser.add_argument("--batch", type=int, default=16, help="slides per Prefect task in the batched way")
    parser.add_argument("--ways", nargs="+", default=WAYS, choices=WAYS, help="which ways to measure")
    parser.add_argument("--quick", action="store_true", help="40 and 120 items: a smoke test")
    args = parser.parse_args()
    counts = (40, 120) if args.quick else tuple(args.counts)
    quiet_dask_logging()
    load = os.getloadavg()
    with prefect_api():
        rows = []
        for way in args.ways:
            runner = make_task_runner(2, None)
            rows.append(measure.with_options(task_runner=runner)(way, counts, args.batch))
    print(
        f"\n{counts[1] - counts[0]} items between checkpoints ({counts[0]} → {counts[1]}), window {WINDOW}, "
        f"2 worker processes, {WORK_S * 1e3:.0f} ms of work per slide; load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    print(
        "| way | driver CPU ms / slide | wall ms / slide | driver RSS KiB / slide | workers' RSS KiB / slide |"
        " first result s |\n|---|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        print(
            f"| {row['way']} | {row['driver_cpu_ms']:.1f} | {row['wall_ms']:.1f} | {row['driver_kib']:.1f} "
            f"| {row['workers_kib']:.1f} | {row['first_result_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
