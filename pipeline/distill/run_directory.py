"""The files of a distillation run: its config, metrics and checkpoints, read back safely.

A run directory is user-writable (and a served deployment lets the caller choose it), so nothing
read from it may run code: checkpoints load with ``torch.load(weights_only=True)``, which unpickles
tensors and plain containers only, and anything else is refused with :class:`CheckpointError`.
A crash can leave the last line of ``metrics.jsonl`` half written; reading skips it, and the resume
that follows rewrites the file without it.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from pipeline.distill.config import DistillConfig, recorded_text
from pipeline.distill.held_out import check_same_held_out
from storage.atomic import atomic_path, write_bytes_atomic


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as plain tensors, or belongs to another run."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


def read_checkpoint(path: Path, *, mmap: bool = False) -> dict:
    """The dict saved in ``path``, unpickled as tensors and plain containers only (never code).

    ``mmap`` maps the tensors instead of reading them: a cheap check that a file is loadable.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            path,
            f"refused: not a plain-tensor checkpoint of this project ({first_line}); "
            "delete it to restart from the previous one",
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(path, "refused: not a distillation checkpoint (no step recorded)")
    return state


def read_teacher_heads(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The ``dino_head.*`` and ``ibot_head.*`` tensors of a heads checkpoint (mode ``checkpoint``), never code."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointError(path, f"refused: not a plain-tensor heads checkpoint ({error})") from None


def parse_records(text: str) -> list[dict]:
    """The JSON records of ``metrics.jsonl`` text; a torn (unterminated or unparseable) last line is skipped."""
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines[:-1]):  # the part after the last newline is not a finished record
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines) - 2:
                raise ValueError(f"metrics.jsonl line {number + 1} is not JSON: {line[:80]!r}") from None
    return records


class RunDirectory:
    """Files of a run: config, held-out tiles, metrics, checkpoints; only rank 0 writes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / "metrics.jsonl"
        self.teacher_heads = self.root / "teacher_heads.pt"
        self.student = self.root / "student.safetensors"
        self.held_out = self.root / "held_out.json"

    def start(self, config: DistillConfig) -> None:
        """Record the config, or check that a resumed run uses the same one."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        path = self.root / "config.yaml"
        text = recorded_text(config)
        if path.exists() and path.read_text() != text:
            raise ValueError(f"{self.root} holds a run with another config; use another --out")
        write_bytes_atomic(path, text.encode())

    def keep_held_out(self, record: dict) -> None:
        """Record the run's held-out tiles (:meth:`HeldOutSplit.record`) in ``held_out.json``, or raise
        :class:`~pipeline.distill.held_out.HeldOutMismatch` when a resumed run's stores hold out others.
        """
        recorded = self.recorded_held_out()
        if recorded is not None:
            check_same_held_out(recorded, record, self.root)
        write_bytes_atomic(self.held_out, (json.dumps(record, indent=1) + "\n").encode())

    def recorded_held_out(self) -> dict | None:
        return json.loads(self.held_out.read_text()) if self.held_out.exists() else None

    def latest_checkpoint(self, stage: str) -> Path | None:
        found = sorted(self.checkpoints.glob(f"{stage}-*.pt"))
        return found[-1] if found else None

    def check_checkpoints(self) -> None:
        """Raise :class:`CheckpointError` now if a resume would meet an unreadable latest checkpoint."""
        for stage in ("heads", "distill"):
            latest = self.latest_checkpoint(stage)
            if latest is not None:
                read_checkpoint(latest, mmap=True)

    def save_checkpoint(self, name: str, step: int, state: dict) -> Path:
        """Write ``state`` as ``checkpoints/<name>-<step>.pt`` atomically (rank 0 only calls it)."""
        path = self.checkpoints / f"{name}-{step:07d}.pt"
        with atomic_path(path) as temporary:
            torch.save(state, temporary)
        return path

    def log(self, record: dict) -> None:
        with self.metrics.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        return parse_records(self.metrics.read_text()) if self.metrics.exists() else []

    def truncate_metrics(self, stage: str, step: int) -> None:
        """Forget records past ``step`` of ``stage`` (written after the checkpoint a resumed run restarts
        from), the end-of-run agreement when the distillation resumes (it is measured again), and a torn
        last line.
        """
        if not self.metrics.exists():
            return
        kept = [
            r
            for r in self.records()
            if not (r["stage"] == stage and r["step"] > step) and not (stage == "distill" and r["stage"] == "agreement")
        ]
        write_bytes_atomic(self.metrics, "".join(f"{json.dumps(r)}\n" for r in kept).encode())
