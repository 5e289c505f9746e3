"""The distillation flow: run the training and show its progress, checkpoints and exported student.

One process trains in this process (a thread, so that the flow can follow
``metrics.jsonl`` meanwhile); several run under ``torchrun`` (one per GPU,
or gloo processes on a CPU). Progress (loss, images/s, ETA) goes to the log,
a progress bar and a Prefect progress artifact; checkpoints and the export
are recorded as a markdown artifact at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from tqdm import tqdm

from pipeline.distill.config import DistillConfig, recorded_text
from pipeline.distill.run_directory import parse_records

_POLL_S = 2.0


def _records(metrics: Path, seen: int) -> list[dict]:
    """Records past the first ``seen``; a line still being written is left for the next poll."""
    return parse_records(metrics.read_text())[seen:] if metrics.exists() else []


def _launch(config: DistillConfig, stores: list[str], out: Path, processes: int, device: str, sharding: str):
    """Start the training; returns ``(is_running, wait)``.

    torchrun's processes read the config from a file of this run's (deleted when it ends).
    """
    if processes <= 1:
        from pipeline.distill.train import train

        failure: list[BaseException] = []

        def target() -> None:
            try:
                train(config, stores, out, "cuda" if device == "cuda" else "cpu")
            except BaseException as error:  # re-raised in the flow's thread by wait()
                failure.append(error)

        thread = threading.Thread(target=target, name="distill", daemon=True)
        thread.start()

        def wait() -> None:
            thread.join()
            if failure:
                raise failure[0]

        return thread.is_alive, wait
    folder = tempfile.TemporaryDirectory(prefix="distill-config-")
    config_path = Path(folder.name) / "config.yaml"
    config_path.write_text(recorded_text(config))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "pipeline.distill.train",
        "--config",
        str(config_path),
        "--tiles",
        *stores,
        "--out",
        str(out),
        "--device",
        device,
        "--sharding",
        sharding,
    ]
    process = subprocess.Popen(command)

    def wait() -> None:
        code = process.wait()
        folder.cleanup()
        if code != 0:
            raise RuntimeError(f"torchrun exited with code {process.returncode}: {' '.join(command)}")

    return lambda: process.poll() is None, wait


@flow(name="distill", log_prints=True)
def distill(
    config: DistillConfig,
    tiles: list[str],
    out: str,
    processes: int = 1,
    device: str = "cpu",
    sharding: str = "ddp",
    progress_bar: bool = False,
) -> dict:
    """Distil the configured teacher into the student on the tile stores ``tiles``; return the last metrics.

    ``sharding`` (``ddp`` or ``fsdp``) chooses how several processes hold the networks.
    """
    logger = get_run_logger()
    run = Path(out)
    total = config.train.iterations + (config.heads.fit_iterations if config.heads.teacher_heads == "fit" else 0)
    progress = create_progress_artifact(progress=0.0, key="distill-progress", description=f"distillation into {run}")
    is_running, wait = _launch(config, [str(Path(t)) for t in tiles], run, processes, device, sharding)
    seen, last = 0, {}
    with tqdm(total=total, unit="step", disable=not progress_bar, file=sys.stderr) as bar:
        while True:
            running = is_running()
            for record in _records(run / "metrics.jsonl", seen):
                seen += 1
                if record["stage"] == "agreement":
                    logger.info("teacher-student agreement: %s", json.dumps(record))
                    continue
                last = record
                done = record["step"] + (
                    config.heads.fit_iterations
                    if record["stage"] == "distill" and config.heads.teacher_heads == "fit"
                    else 0
                )
                bar.update(done - bar.n)
                bar.set_postfix(stage=record["stage"], loss=f"{record['loss']:.4f}", img_s=record["images_per_s"])
                logger.info(
                    "%s step %d: loss %.4f, %.1f images/s, ETA %.0f s",
                    record["stage"],
                    record["step"],
                    record["loss"],
                    record["images_per_s"],
                    record["eta_s"],
                )
                update_progress_artifact(progress, 100.0 * done / total)
            if not running:
                break
            time.sleep(_POLL_S)
    wait()
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
    create_markdown_artifact(
        f"Exported `{run / 'student.safetensors'}` (model card `MODEL_CARD.md`).\n\n"
        f"Last metrics: `{json.dumps(last)}`\n\nCheckpoints: " + ", ".join(f"`{c}`" for c in checkpoints),
        key="distill-result",
        description=f"distillation into {run}",
    )
    print(f"distillation finished: {run / 'student.safetensors'}; last loss {last.get('loss')}")
    return last
