"""The training rules around the losses, against DINOv2's code transcribed: parameter groups (layer-wise LR
decay, patch-embedding LR, weight-decay exemptions), per-module clipping, float32 teacher heads, the
head-fitting stage's schedules, and a whole step's objective on identical tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.distill.config import DistillConfig
from pipeline.distill.networks import Outputs, StudentSide, TeacherSide, make_heads, seeded_model
from pipeline.distill.objective import Objective
from pipeline.distill.optim import clip_per_module, param_groups, set_learning_rates
from pipeline.distill.schedules import Schedules
from pipeline.models import build_model

HEADS = {"prototypes": 16, "hidden_dim": 12, "dino_bottleneck_dim": 8, "ibot_bottleneck_dim": 6}


def _student(config: DistillConfig) -> StudentSide:
    torch.manual_seed(0)
    backbone = build_model("tiny-student", dynamic_img_size=True)
    return StudentSide(backbone, make_heads(backbone.embed_dim, config.heads))


# --- DINOv2's rules, transcribed from dinov2/train/param_groups.py (names as DINOv2's ViT has them) ----


def _dinov2_lr_decay_rate(name: str, lr_decay_rate: float, num_layers: int, force_is_backbone: bool) -> float:
    layer_id = num_layers + 1
    if name.startswith("backbone") or force_is_backbone:
        if any(part in name for part in ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")):
            layer_id = 0
        elif "blocks." in name and "residual." not in name:
            layer_id = int(name[name.find("blocks.") :].split(".")[1]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


def _dinov2_groups(module: torch.nn.Module, lr_decay_rate: float, patch_embed_lr_mult: float) -> dict[str, tuple]:
    """``name -> (lr_multiplier, wd_multiplier, is_last_layer)`` as DINOv2's get_params_groups_with_decay gives."""
    n_blocks = len(module.blocks) if hasattr(module, "blocks") else 0
    result = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        dinov2_name = name.replace("reg_token", "register_tokens")  # timm's name for DINOv2's registers
        lr = _dinov2_lr_decay_rate(dinov2_name, lr_decay_rate, n_blocks, force_is_backbone=n_blocks > 0)
        wd = 0.0 if name.endswith(".bias") or "norm" in name or "gamma" in name else 1.0
        if "patch_embed" in name:
            lr *= patch_embed_lr_mult
        result[name] = (lr, wd, "last_layer" in name)
    return result


def test_parameter_groups_give_every_parameter_dinov2s_lr_and_weight_decay_multipliers():
    config = DistillConfig.model_validate({"heads": HEADS})
    student = _student(config)
    groups = param_groups(student, config.optim)
    ours = {
        name: (group["lr_multiplier"], group["wd_multiplier"], group["prototypes"])
        for group in groups
        for name in group["names"]
    }
    expected = {
        f"{prefix}.{name}": value
        for prefix, module in (("backbone", student.backbone), *student.heads.items())
        for name, value in _dinov2_groups(module, 0.9, 0.2).items()
    }
    assert ours.keys() == expected.keys() == {n.removeprefix("heads.") for n, _ in student.named_parameters()}
    for name, (lr, wd, prototypes) in expected.items():
        assert ours[name] == (pytest.approx(lr), wd, prototypes), name
    # The same, spelled out for the 2-block tiny student: decay ** (L + 1 - layer).
    assert ours["backbone.patch_embed.proj.weight"][:2] == (pytest.approx(0.9**3 * 0.2), 1.0)
    assert ours["backbone.patch_embed.proj.bias"][:2] == (pytest.approx(0.9**3 * 0.2), 0.0)
    for token in ("cls_token", "reg_token", "pos_embed"):  # DINOv2 decays them (no exemption)
        assert ours[f"backbone.{token}"][:2] == (pytest.approx(0.9**3), 1.0)
    assert ours["backbone.blocks.0.attn.qkv.weight"][:2] == (pytest.approx(0.81), 1.0)
    assert ours["backbone.blocks.1.mlp.fc1.weight"][:2] == (pytest.approx(0.9), 1.0)
    assert ours["backbone.blocks.1.ls2.gamma"][:2] == (pytest.approx(0.9), 0.0)
    assert ours["backbone.blocks.0.norm1.weight"][:2] == (pytest.approx(0.81), 0.0)
    assert ours["backbone.norm.weight"][:2] == (1.0, 0.0)
    assert ours["dino_head.mlp.0.weight"] == (1.0, 1.0, False)
    assert ours["ibot_head.last_layer.parametrizations.weight.original0"] == (1.0, 1.0, True)  # g: decayed


def test_each_group_gets_the_scheduled_lr_times_its_multiplier_and_prototypes_their_own():
    config = DistillConfig.model_validate(
        {"heads": HEADS, "optim": {"layerwise_decay": 0.5, "patch_embed_lr_mult": 0.1}}
    )
    student = _student(config)
    optimizer = torch.optim.AdamW(param_groups(student, config.optim))
    set_learning_rates(optimizer, lr=1e-3, prototype_lr=0.0, weight_decay=0.04)
    by_name = {name: group for group in optimizer.param_groups for name in group["names"]}
    assert by_name["backbone.patch_embed.proj.weight"]["lr"] == pytest.approx(1e-3 * 0.5**3 * 0.1)
    assert by_name["backbone.blocks.1.attn.proj.weight"]["lr"] == pytest.approx(1e-3 * 0.5)
    assert by_name["dino_head.mlp.2.weight"]["lr"] == pytest.approx(1e-3)
    assert by_name["dino_head.last_layer.parametrizations.weight.original1"]["lr"] == 0.0
    assert by_name["dino_head.mlp.2.weight"]["weight_decay"] == pytest.approx(0.04)
    assert by_name["dino_head.mlp.2.bias"]["weight_decay"] == 0.0
    heads_only = StudentSide(student.backbone, student.heads, train_backbone=False)
    assert all(group["module"] != "backbone" for group in param_groups(heads_only, config.optim))


def test_each_module_is_clipped_to_the_bound_on_its_own():
    config = DistillConfig.model_validate({"heads": HEADS})
    student = _student(config)
    scales = {"backbone": 100.0, "dino_head": 5.0, "ibot_head": 1e-3}
    for name, module in (("backbone", student.backbone), *student.heads.items()):
        for parameter in module.parameters():
            parameter.grad = torch.randn_like(parameter) * scales[name]
    before = {
        name: torch.cat([p.grad.flatten() for p in module.parameters()]).norm()
        for name, module in (("backbone", student.backbone), *student.heads.items())
    }
    norms = clip_per_module(student, 3.0)
    for name, module in (("backbone", student.backbone), *student.heads.items()):
        after = torch.cat([p.grad.flatten() for p in module.parameters()]).norm()
        torch.testing.assert_close(norms[name], before[name])
        # DINOv2: every module above the bound ends at it; one below keeps its gradient (a joint norm
        # over all three would have left the backbone below 3 and shrunk the iBOT head's to nothing).
        torch.testing.assert_close(after, torch.minimum(before[name], torch.tensor(3.0)), rtol=1e-4, atol=0)
    assert before["ibot_head"] < 3.0 < before["dino_head"]


def test_teacher_heads_run_in_float32_under_bfloat16_autocast():
    config = DistillConfig.model_validate({"heads": HEADS})
    torch.manual_seed(0)
    backbone = build_model("tiny-teacher", dynamic_img_size=True)
    teacher = TeacherSide(backbone, make_heads(backbone.embed_dim, config.heads))
    images = torch.randint(0, 256, (2, 28, 28, 3), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = teacher(images)
        with torch.no_grad():
            plain = teacher.heads["ibot_head"](outputs.patches)
    assert plain.dtype == torch.bfloat16  # what the heads gave under autocast before
    assert outputs.dino.dtype == outputs.ibot.dtype == torch.float32
    with torch.no_grad():
        expected = teacher.heads["ibot_head"](outputs.patches.float())
    torch.testing.assert_close(outputs.ibot, expected, rtol=0, atol=0)


def test_the_head_fitting_stage_warms_up_decays_and_freezes_within_its_own_iterations():
    config = DistillConfig()  # Table 4: 105,000 iterations, heads fitted in 2,000
    heads = Schedules.from_config(config, config.heads.fit_iterations)
    run = Schedules.from_config(config, config.train.iterations)
    peak = config.optim.base_lr * np.sqrt(2048 / 1024)
    # Lengths scaled by 2,000 / 105,000: warm-up 16 epochs -> 381, freeze 1 epoch -> 24, temperature 30 -> 714
    # (DINOv2's linspace reaches 0.07 at the last warm-up iteration).
    assert int(np.argmax(heads.lr)) == 381 and heads.lr.max() == pytest.approx(peak)
    assert heads.lr[-1] == pytest.approx(config.optim.min_lr, rel=1e-2)
    assert np.count_nonzero(heads.prototype_lr == 0) == 24 and heads.prototype_lr[24] == heads.lr[24]
    assert np.count_nonzero(heads.teacher_temp < 0.07 - 1e-9) == 713 and heads.teacher_temp[713] == pytest.approx(0.07)
    assert int(np.argmax(run.lr)) == 16 * 1250 and np.count_nonzero(run.prototype_lr == 0) == 1250


def test_seeded_models_are_the_same_network_at_every_start_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = seeded_model("tiny-teacher", 7)
    assert torch.equal(torch.get_rng_state(), state)
    again, other = seeded_model("tiny-teacher", 7), seeded_model("tiny-teacher", 8)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(first.pos_embed, other.pos_embed)
    student = seeded_model("tiny-student", 7)  # another name, another draw (not the teacher's first values)
    assert not torch.equal(student.cls_token.flatten()[:8], first.cls_token.flatten()[:8])


# --- one step's objective against DINOv2's ssl_meta_arch.py + loss/*.py, transcribed ----------------------


def _dinov2_objective(
    student: Outputs,
    teacher: Outputs,
    temp: float,
    dino_center: torch.Tensor,
    ibot_center: torch.Tensor,
    n_local: int,
    student_temp: float = 0.1,
    momentum: float = 0.9,
):
    """DINOv2's forward_backward for 2 global crops, ``n_local`` local crops and every patch masked."""
    batch = len(teacher.dino) // 2
    t_dino = F.softmax((teacher.dino - dino_center) / temp, dim=-1)  # DINOLoss.softmax_center_teacher
    t_dino = list(t_dino.chunk(2))[::-1]  # teacher_dino_softmaxed_centered_list, swapped for the global term

    def dino_loss(student_list, teacher_list):  # DINOLoss.forward
        total = 0
        for s in student_list:
            lsm = F.log_softmax(s / student_temp, dim=-1)
            for t in teacher_list:
                total -= torch.sum(t * lsm, dim=-1).mean()
        return total

    n_terms = 2 * n_local + 2  # n_local_crops_loss_terms + n_global_crops_loss_terms
    local = student.dino[2 * batch :].chunk(n_local) if n_local else ()
    dino = dino_loss(local, t_dino) / n_terms
    dino = dino + dino_loss([student.dino[: 2 * batch]], [torch.cat(t_dino)]) * 2 / n_terms  # loss_scales = 2
    flat_teacher = teacher.ibot.flatten(0, 1)
    t_ibot = F.softmax((flat_teacher - ibot_center) / temp, dim=-1)  # iBOTPatchLoss.softmax_center_teacher
    masks = torch.ones(2 * batch, teacher.ibot.shape[1], dtype=torch.bool)  # the paper: every patch
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    per_patch = torch.sum(t_ibot * F.log_softmax(student.ibot.flatten(0, 1) / student_temp, dim=-1), dim=-1)
    ibot = -(per_patch * weights).sum() / masks.shape[0] * 2 * 0.5  # loss_scales * ibot_loss_scale
    new_dino_center = dino_center * momentum + teacher.dino.sum(0, keepdim=True) / len(teacher.dino) * (1 - momentum)
    new_ibot_center = ibot_center * momentum + flat_teacher.mean(0, keepdim=True) * (1 - momentum)
    return dino, ibot, new_dino_center, new_ibot_center


def test_a_steps_objective_equals_dinov2s_on_identical_tensors_over_two_steps():
    torch.manual_seed(11)
    batch, n_local, k, patches = 3, 2, 32, 5
    config = DistillConfig.model_validate({"heads": {**HEADS, "prototypes": k}})
    objective = Objective(config, 8, 8, with_heads=True)
    dino_center, ibot_center = torch.zeros(1, k), torch.zeros(1, k)
    for temp in (0.04, 0.07):
        teacher = Outputs(torch.zeros(0), torch.zeros(0), torch.randn(2 * batch, k), torch.randn(2 * batch, patches, k))
        student = Outputs(
            torch.zeros(0), torch.zeros(0), torch.randn((2 + n_local) * batch, k), torch.randn(2 * batch, patches, k)
        )
        losses = objective(student, teacher, temp, None)
        dino, ibot, dino_center, ibot_center = _dinov2_objective(
            student, teacher, temp, dino_center, ibot_center, n_local
        )
        torch.testing.assert_close(losses["dino_loss"], dino, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(losses["ibot_loss"], ibot, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(losses["loss"], dino + ibot, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(objective.dino.center, dino_center)
        torch.testing.assert_close(objective.ibot.center.view(1, k), ibot_center)
