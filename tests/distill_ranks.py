"""One torchrun launch, two runs: ``pipeline.distill.train.main`` with DDP, then with FSDP, in the same processes.

The tests of distributed training need both, and starting the processes (Python, torch, timm, twice a launch)
costs more than their few training steps; the entry point is the real one, called twice::

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.distill_ranks CONFIG STORE OUT

writes ``OUT/ddp`` and ``OUT/fsdp``.
"""

from __future__ import annotations

import sys

from pipeline.distill.train import main


def run_both(config: str, store: str, out: str) -> None:
    for sharding in ("ddp", "fsdp"):
        arguments = ["--config", config, "--tiles", store, "--out", f"{out}/{sharding}", "--device", "cpu"]
        main([*arguments, "--sharding", sharding])


if __name__ == "__main__":
    run_both(*sys.argv[1:])
