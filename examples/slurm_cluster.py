r"""Start a Dask cluster of SLURM jobs for distillpath's flows, print its address, and keep it up.

Run it on a node the compute nodes can reach (a login node, or inside a small SLURM job), with the
settings of ``examples/dask_slurm.yaml`` in Dask's configuration::

    pip install dask-jobqueue                      # once, on this node only
    export DASK_CONFIG=$PWD/examples               # or copy dask_slurm.yaml to ~/.config/dask/
    python examples/slurm_cluster.py --jobs 16                   # CPU workers, scheduler on :8786
    python examples/slurm_cluster.py --gpu --queue gpu --jobs 4 --port 8790  # one GPU per worker

then, from any machine that reaches it::

    python -m flows.tile_tcga --slides /shared/slides --out /shared/tiles.zarr --dask-address tcp://HOST:8786
    python -m flows.embed --tiles /shared/tiles.zarr --out /shared/emb.zarr --model h0-mini \
        --weights /shared/H0-mini.safetensors --device cuda --partitions 4 --dask-address tcp://HOST:8790

or give the address to the served deployments (``python -m flows.serve --dask-address ...``, or
the ``dask_address`` parameter of a run in the UI). Ctrl-C cancels the jobs.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs, one Dask worker each")
    parser.add_argument("--gpu", action="store_true", help="one GPU per job and per worker (for flows.embed)")
    parser.add_argument("--queue", help="SLURM partition (default: the config file's)")
    parser.add_argument("--port", type=int, default=8786, help="scheduler port")
    parser.add_argument("--adapt", action="store_true", help="scale between 0 and --jobs with the work queued")
    parser.add_argument("--print-job-script", action="store_true", help="show the sbatch script and exit")
    args = parser.parse_args()

    from dask_jobqueue import SLURMCluster  # only this example needs dask-jobqueue

    overrides = {}
    if args.gpu:
        # SLURM sets CUDA_VISIBLE_DEVICES to the job's GPU: each worker sees one GPU, as cuda:0, and
        # runs one embedding partition at a time (one thread). GPU=1 lets tasks annotated with
        # resources={"GPU": 1} be placed only there.
        overrides = {
            "job_extra_directives": ["--gres=gpu:1"],
            "worker_extra_args": ["--resources", "GPU=1"],
            "job_cpu": 8,
            "memory": "64GiB",
        }  # CPUs decode tiles in --loader-workers processes
    if args.queue:
        overrides["queue"] = args.queue
    cluster = SLURMCluster(
        scheduler_options={"port": args.port, "dashboard_address": f":{args.port + 1}"},
        **overrides,
    )
    if args.print_job_script:
        print(cluster.job_script())
        cluster.close()
        return
    if args.adapt:
        cluster.adapt(minimum_jobs=0, maximum_jobs=args.jobs)
    else:
        cluster.scale(jobs=args.jobs)
    print(f"Dask scheduler: {cluster.scheduler_address}   dashboard: {cluster.dashboard_link}", flush=True)
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()  # cancels the workers' SLURM jobs


if __name__ == "__main__":
    main()
