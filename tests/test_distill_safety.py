"""Hostile and careless inputs to a distillation: planted or broken checkpoints, a broken config, a torn
metrics line, a teacher that changed under a resume, a random teacher. No code runs, no traceback.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import save_file

from flows.distill import main
from pipeline.distill.config import ConfigError, DistillConfig, random_teacher_warning
from pipeline.distill.held_out import HeldOutMismatch
from pipeline.distill.run_directory import CheckpointError, RunDirectory, parse_records, read_checkpoint
from pipeline.distill.train import train
from pipeline.models import build_model
from tests.flow_helpers import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {
    "models": {"teacher": "tiny-teacher", "student": "tiny-student", "random_teacher_layerscale": 1.0},
    "heads": {
        "prototypes": 32,
        "hidden_dim": 16,
        "dino_bottleneck_dim": 8,
        "ibot_bottleneck_dim": 8,
        "teacher_heads": "fit",
        "fit_iterations": 1,
    },
    "train": {
        "batch_size_total": 4,
        "iterations": 4,
        "iterations_per_epoch": 2,
        "precision": "fp32",
        "log_every": 1,
        "checkpoint_every": 2,
        "loader_workers": 0,
        "piece_tiles": 8,
        "window_tiles": 16,
        "agreement_tiles": 0,
    },
    "crops": {"global_crop_size": 28, "local_crop_size": 14, "local_crops_number": 1},
}


class _PlantedCode:
    """Unpickling this calls ``open(path, "w")``: a file appears if a loader runs code from the checkpoint."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _plant(run, marker, name="distill-0000002.pt") -> None:
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"step": 2, "student": _PlantedCode(marker)}, run / "checkpoints" / name)


def _cli(tmp_path, config_text: str, run, capsys) -> tuple[int, str]:
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    code = main(["--config", str(config), "--tiles", str(tmp_path / "no-store"), "--out", str(run)])
    return code, capsys.readouterr().err


def test_a_planted_checkpoint_is_refused_and_runs_nothing(tmp_path, shipped_tile_store, capsys):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    _plant(run, marker)
    with pytest.raises(CheckpointError, match="refused: not a plain-tensor checkpoint"):
        read_checkpoint(run / "checkpoints" / "distill-0000002.pt")
    assert not marker.exists()
    code, err = _cli(tmp_path, yaml.safe_dump(TINY), run, capsys)  # the command line, before anything starts
    assert code == 2 and "distill-0000002.pt: refused" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()
    config = DistillConfig.model_validate(TINY)
    with pytest.raises(CheckpointError, match="refused"):  # and the training itself, reached another way
        train(config, [str(shipped_tile_store)], run)
    assert not marker.exists()


def test_a_garbage_checkpoint_and_a_broken_yaml_are_one_line_user_errors(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "heads-0000001.pt").write_bytes(b"\x00not a checkpoint at all" * 10)
    code, err = _cli(tmp_path, yaml.safe_dump(TINY), run, capsys)
    assert code == 2 and "heads-0000001.pt: refused" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, err = _cli(
        tmp_path, "models:\n  teacher: [tiny-teacher\n  student: tiny-student\n", tmp_path / "other", capsys
    )
    assert code == 2 and "not valid YAML at line" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, err = _cli(tmp_path, "optim:\n  clip_grad: -1\n", tmp_path / "other", capsys)
    assert code == 2 and "optim.clip_grad" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError):
        DistillConfig.from_yaml(tmp_path / "config.yaml")


def test_a_torn_last_metrics_line_is_skipped_and_the_resume_rewrites_it(tmp_path, shipped_tile_store):
    assert parse_records('{"stage": "distill", "step": 1}\n{"stage": "dis') == [{"stage": "distill", "step": 1}]
    with pytest.raises(ValueError, match="line 1"):  # only the last line can be torn by a crash
        parse_records('{"stage": "dis\n{"stage": "distill", "step": 1}\n')
    config = DistillConfig.model_validate(TINY)
    run = tmp_path / "run"
    train(config, [str(shipped_tile_store)], run)
    complete = RunDirectory(run).records()
    # Killed while writing the step-3 record, after the step-2 checkpoint.
    (run / "checkpoints" / "distill-0000004.pt").unlink()
    kept = [r for r in complete if not (r["stage"] == "distill" and r["step"] > 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"stage": "distill", "st')
    train(config, [str(shipped_tile_store)], run)
    again = RunDirectory(run).records()
    untimed = [{k: v for k, v in r.items() if k not in ("images_per_s", "eta_s")} for r in again]
    assert untimed == [{k: v for k, v in r.items() if k not in ("images_per_s", "eta_s")} for r in complete]
    assert (run / "metrics.jsonl").read_text().endswith("}\n")


def test_a_random_teacher_reproduces_and_a_changed_teacher_is_refused_on_resume(tmp_path, shipped_tile_store):
    config = DistillConfig.model_validate(TINY)
    first, second = tmp_path / "first", tmp_path / "second"
    train(config, [str(shipped_tile_store)], first)
    train(config, [str(shipped_tile_store)], second)
    losses = [[r["loss"] for r in RunDirectory(run).records()] for run in (first, second)]
    assert losses[0] == losses[1]  # the same random teacher and student: the tiny run reproduces
    checkpoint = torch.load(first / "checkpoints" / "distill-0000004.pt", weights_only=True)
    assert checkpoint["identity"]["teacher"] == "tiny-teacher"
    assert checkpoint["identity"]["teacher_weights_sha256"] is None

    weights = tmp_path / "teacher.safetensors"
    torch.manual_seed(1)
    save_file(build_model("tiny-teacher").state_dict(), weights)
    with_weights = DistillConfig.model_validate({**TINY, "models": {**TINY["models"], "teacher_weights": str(weights)}})
    run = tmp_path / "weighted"
    train(with_weights, [str(shipped_tile_store)], run)
    (run / "checkpoints" / "distill-0000004.pt").unlink()
    torch.manual_seed(2)
    save_file(build_model("tiny-teacher").state_dict(), weights)  # another teacher under the same file name
    with pytest.raises(CheckpointError, match="teacher or the initialisation differs"):
        train(with_weights, [str(shipped_tile_store)], run)
    shutil.rmtree(run)


def test_a_real_teacher_without_weights_is_warned_about_and_tiny_ones_are_not():
    shipped = DistillConfig.from_yaml(REPO / "configs" / "distill" / "h0-mini.yaml")
    assert shipped.models.teacher_weights is None
    assert "RANDOM TEACHER" in random_teacher_warning(shipped)
    assert random_teacher_warning(DistillConfig.from_yaml(REPO / "configs" / "distill" / "tiny-cpu.yaml")) is None
    other = DistillConfig.model_validate({"models": {"teacher": "vit_small_patch14_dinov2"}})
    assert "'vit_small_patch14_dinov2' is a randomly initialised network" in random_teacher_warning(other)


def test_a_resume_with_other_held_out_tiles_is_refused_and_one_with_the_stores_reordered_repeats(
    tmp_path, shipped_tile_store, capsys
):
    """The held-out tiles are keyed by store identity and slide: a run resumed with its stores in another order
    repeats the uninterrupted one exactly; one resumed without a store is refused in one line.
    """
    data = {**TINY, "train": {**TINY["train"], "agreement_tiles": 8}}
    copy = tmp_path / "copy.zarr"
    shutil.copytree(shipped_tile_store, copy)  # the same identity: it holds out the same tiles
    stores = [str(shipped_tile_store), str(copy)]
    run = tmp_path / "run"
    train(DistillConfig.model_validate(data), stores, run)
    recorded = json.loads((run / "held_out.json").read_text())
    held_out = [len(indices) for store in recorded["stores"] for indices in store["held_out"].values()]
    # 106 tiles: every 14th tile of each slide, the same ones in the copy
    assert recorded["every"] == 14 and held_out[:2] == held_out[2:] and sum(held_out) >= 6
    complete = RunDirectory(run).records()
    (run / "checkpoints" / "distill-0000004.pt").unlink()
    train(DistillConfig.model_validate(data), stores[::-1], run)
    untimed = [{k: v for k, v in r.items() if k not in ("images_per_s", "eta_s")} for r in RunDirectory(run).records()]
    assert untimed == [{k: v for k, v in r.items() if k not in ("images_per_s", "eta_s")} for r in complete]

    (run / "checkpoints" / "distill-0000004.pt").unlink()
    with pytest.raises(HeldOutMismatch, match="other stores or other tiles held out"):
        train(DistillConfig.model_validate(data), stores[:1], run)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    code = main(["--config", str(config), "--tiles", stores[0], "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "other stores or other tiles held out" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
