"""One torchrun launch, two runs: ``pipeline.distill.train.main`` with DDP, then with FSDP, in the same processes.

The tests of distributed training need both, and starting the processes (Python, torch, timm, twice a launch)
costs more than their few training steps; the entry point is the real one, called twice::

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.distill_ranks CONFIG STORE OUT

writes ``OUT/ddp`` and ``OUT/fsdp``.

Each run gets a rendezvous store of its own. A process group created again after ``destroy_process_group`` has
the same name as the first, so on the launcher's store its ranks' addresses sit under the same keys as the first
group's, and a rank that looks before the other has written its new address reads the old one and is refused
("Gloo connectFullMesh failed ... Connection refused"; seen under load). The second run's store is a new one that
rank 0 opens on a free port, announced to the other ranks through the launcher's store.
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta

import torch.distributed as dist

from pipeline.distill.train import main


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _own_store_for_the_next_run(run: str) -> None:
    """Point ``env://`` at a fresh store, rank 0 its server, on a port rank 0 announces under ``run``."""
    launcher = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=120)
    )
    if os.environ["RANK"] == "0":
        launcher.set(f"distill_ranks/{run}", str(_free_port()))
    os.environ["MASTER_PORT"] = launcher.get(f"distill_ranks/{run}").decode()
    os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "False"  # rank 0 serves the new store itself


def run_both(config: str, store: str, out: str) -> None:
    for number, sharding in enumerate(("ddp", "fsdp")):
        if number:
            _own_store_for_the_next_run(sharding)
        arguments = ["--config", config, "--tiles", store, "--out", f"{out}/{sharding}", "--device", "cpu"]
        main([*arguments, "--sharding", sharding])


if __name__ == "__main__":
    run_both(*sys.argv[1:])
