"""DINO / iBOT / regression losses and the DINO head, against values worked out by hand and DINOv2's rules."""

from __future__ import annotations

import copy
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pipeline.distill.heads import DINOHead
from pipeline.distill.losses import DINOLoss, IBOTPatchLoss, TokenRegressionLoss

LN2 = math.log(2.0)


def _logits_of(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax (at temperature 1) is ``probs``."""
    return torch.tensor(probs).log()


def _dinov2_sinkhorn(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """DINOv2's algorithm written out plainly (single process, no max shift) as the reference."""
    q = torch.exp(logits.double() / temp).t()
    n_prototypes, n_samples = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / n_prototypes
        q = q / q.sum(dim=0, keepdim=True) / n_samples
    return (q * n_samples).t()


# --- DINO: centering, centre EMA, pairing -------------------------------------------------------------


def test_centering_subtracts_the_centre_then_divides_by_the_teacher_temperature() -> None:
    loss = DINOLoss(3)
    loss.center.copy_(torch.tensor([[1.0, 0.0, -1.0]]))
    temp = 0.5
    # (t - c) / temp = [0, ln 2, ln 5] -> softmax = [1, 2, 5] / 8; a constant row gives uniform targets.
    shifted = torch.tensor([0.0, LN2, math.log(5.0)]) * temp
    logits = torch.stack([shifted + loss.center[0], loss.center[0] + 7.0])
    probs = loss.teacher_probabilities(logits, teacher_temp=temp)
    expected = torch.tensor([[1 / 8, 2 / 8, 5 / 8], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(probs, expected)


def test_centre_is_an_ema_of_the_batch_mean_and_is_only_used_from_the_next_step() -> None:
    loss = DINOLoss(3, center_momentum=0.9)
    first = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])  # batch mean [2, 2, 2]
    before = loss.teacher_probabilities(first, teacher_temp=1.0)
    loss.update_center(first)
    torch.testing.assert_close(before, F.softmax(first, dim=-1))  # probabilities used the old (zero) centre
    torch.testing.assert_close(loss.center, torch.tensor([[0.2, 0.2, 0.2]]))  # 0.9 * 0 + 0.1 * 2
    loss.update_center(torch.tensor([[0.0, 0.0, 10.0], [0.0, 0.0, 0.0]]))  # batch mean [0, 0, 5]
    torch.testing.assert_close(loss.center, torch.tensor([[0.18, 0.18, 0.68]]))


def test_sinkhorn_knopp_keeps_no_centre() -> None:
    loss = DINOLoss(3, centering="sinkhorn_knopp")
    loss.update_center(torch.ones(4, 3))
    assert torch.count_nonzero(loss.center) == 0


def test_each_student_crop_meets_every_teacher_global_crop_but_its_own_view() -> None:
    """2 global + 1 local crop, B = 2, K = 3, one-hot teacher targets: every pair's CE is a log of 2.

    Pairs (teacher i, student j): (0,1) -ln 1/4, (0,2) -ln 1/8, (1,0) -ln 1/4, (1,2) -ln 1/8, divided by
    G(C-1) = 4 pairs: 2.5 ln 2. The excluded same-view pairs (0,0), (1,1) would each add -ln 1/2.
    """
    loss = DINOLoss(3, student_temp=1.0)
    batch = 2
    teacher = [F.one_hot(torch.full((batch,), k), 3).float() for k in (0, 1)]
    students = [
        _logits_of([[0.5, 0.25, 0.25]] * batch),  # global 0
        _logits_of([[0.25, 0.5, 0.25]] * batch),  # global 1
        _logits_of([[0.125, 0.125, 0.75]] * batch),  # local
    ]
    torch.testing.assert_close(loss(students, teacher), torch.tensor(2.5 * LN2))


def test_pair_normalisation_matches_dinov2_ssl_meta_arch() -> None:
    """DINOv2 sums local-crop terms, and the swapped global crops' mean times 2, over G(G-1) + G*L terms."""
    torch.manual_seed(0)
    batch, k, n_local, temp = 4, 5, 3, 0.1
    teacher = [F.softmax(torch.randn(batch, k) / 0.04, dim=-1) for _ in range(2)]
    students = [torch.randn(batch, k) for _ in range(2 + n_local)]
    n_terms = 2 * (2 - 1) + 2 * n_local

    def ce(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return -(t * F.log_softmax(s / temp, dim=-1)).sum(-1).mean()

    local = sum(ce(t, s) for s in students[2:] for t in teacher) / n_terms
    global_ = ce(torch.cat([teacher[1], teacher[0]]), torch.cat(students[:2])) * 2 / n_terms
    torch.testing.assert_close(DINOLoss(k, student_temp=temp)(students, teacher), local + global_)


def test_dino_loss_needs_a_pair() -> None:
    with pytest.raises(ValueError, match="student crops"):
        DINOLoss(3)([torch.zeros(2, 3)], [torch.full((2, 3), 1 / 3)])


# --- Sinkhorn-Knopp ----------------------------------------------------------------------------------


def test_sinkhorn_knopp_spreads_samples_evenly_over_prototypes() -> None:
    """Both samples prefer prototype 0 (softmax [0.8, 0.2]); Q = [[4, 4], [1, 1]] / 10 -> rows to 1/K ->
    [[.25, .25], [.25, .25]] -> columns to 1/M: unchanged -> times M: each sample gets [0.5, 0.5].
    """
    temp = 0.1
    logits = torch.tensor([[math.log(4.0), 0.0], [math.log(4.0), 0.0]]) * temp
    probs = DINOLoss(2, centering="sinkhorn_knopp").teacher_probabilities(logits, teacher_temp=temp)
    torch.testing.assert_close(probs, torch.full((2, 2), 0.5))


def test_sinkhorn_knopp_leaves_a_balanced_assignment_as_its_softmax() -> None:
    temp = 0.05
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]]) * temp  # exp: [[3, 1], [1, 3]]
    probs = DINOLoss(2, centering="sinkhorn_knopp").teacher_probabilities(logits, teacher_temp=temp)
    torch.testing.assert_close(probs, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))


def test_sinkhorn_knopp_matches_dinov2_three_iterations_and_survives_large_logits() -> None:
    torch.manual_seed(1)
    logits = torch.randn(5, 7)  # 5 samples, 7 prototypes
    probs = DINOLoss(7, centering="sinkhorn_knopp").teacher_probabilities(logits, teacher_temp=0.07)
    torch.testing.assert_close(probs, _dinov2_sinkhorn(logits, 0.07).float())
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))  # each sample is a distribution
    # exp(7 / 0.04) overflows float32: the shift by the global maximum keeps the (equal) result finite.
    sinkhorn = DINOLoss(7, centering="sinkhorn_knopp")
    big = sinkhorn.teacher_probabilities(logits + 5.0, teacher_temp=0.04)
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big, sinkhorn.teacher_probabilities(logits, teacher_temp=0.04))


def test_ibot_sinkhorn_knopp_treats_every_patch_as_a_sample() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4)  # B = 2 images, N = 3 patches, K = 4
    probs = IBOTPatchLoss(4, centering="sinkhorn_knopp").teacher_probabilities(logits, teacher_temp=0.1)
    torch.testing.assert_close(probs, _dinov2_sinkhorn(logits.reshape(6, 4), 0.1).float().reshape(2, 3, 4))


# --- iBOT patches ------------------------------------------------------------------------------------


def test_ibot_loss_averages_patches_of_each_image_then_images() -> None:
    """One-hot targets on prototype 0; student p_0 per patch: image 0 [1/2, 1/4] -> (ln2 + 2 ln2) / 2,
    image 1 [1/8, 1/8] -> 3 ln2; mean over images: 2.25 ln 2.
    """
    teacher = F.one_hot(torch.zeros(2, 2, dtype=torch.long), 3).float()
    student = torch.stack(
        [
            _logits_of([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]),
            _logits_of([[0.125, 0.125, 0.75], [0.125, 0.75, 0.125]]),
        ]
    )
    torch.testing.assert_close(IBOTPatchLoss(3, student_temp=1.0)(student, teacher), torch.tensor(2.25 * LN2))


def test_ibot_centre_and_centering_per_patch() -> None:
    loss = IBOTPatchLoss(3, center_momentum=0.5)
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # image means [1, 0, 0]
            [[0.0, 4.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )  # and [0, 2, 0]
    loss.update_center(logits)
    assert loss.center.shape == (1, 1, 3)  # DINOv2's buffer shape
    torch.testing.assert_close(loss.center, torch.tensor([[[0.25, 0.5, 0.0]]]))  # 0.5 * mean [0.5, 1, 0]
    probs = loss.teacher_probabilities(logits, teacher_temp=0.5)
    torch.testing.assert_close(probs, F.softmax((logits - loss.center) / 0.5, dim=-1))


# --- regression (head-free mode) -----------------------------------------------------------------------


def test_token_regression_is_one_minus_cosine_plus_smooth_l1() -> None:
    """Identity projectors. Class tokens: [1,0]->[0,1]: (1-0) + mean(.5,.5) = 1.5; [2,0]->[1,0]: 0 + mean(.5, 0)
    = .25; mean .875. Patches, image 0: [.5,0]->[1,0]: 0 + mean(.125, 0) = .0625; [0,1]->[0,-1]: 2 + mean(0,
    1.5) = 2.75; mean 1.40625. Image 1 exact: 0. Mean over images .703125. Total 1.578125.
    """
    loss = TokenRegressionLoss(2, 2)
    with torch.no_grad():
        for projector in (loss.cls_projector, loss.patch_projector):
            projector.weight.copy_(torch.eye(2))
            projector.bias.zero_()
    student_cls, teacher_cls = torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    student_patches = torch.tensor([[[0.5, 0.0], [0.0, 1.0]], [[3.0, 1.0], [-1.0, 2.0]]])
    teacher_patches = torch.tensor([[[1.0, 0.0], [0.0, -1.0]], [[3.0, 1.0], [-1.0, 2.0]]])
    value = loss(student_cls, student_patches, teacher_cls, teacher_patches)
    torch.testing.assert_close(value, torch.tensor(1.578125))


# --- gradients and precision -------------------------------------------------------------------------


def test_gradients_reach_only_the_student_side() -> None:
    torch.manual_seed(3)
    teacher_logits = torch.randn(4, 5, requires_grad=True)
    dino = DINOLoss(5)
    probs = dino.teacher_probabilities(teacher_logits, teacher_temp=0.04)
    assert not probs.requires_grad
    students = [torch.randn(2, 5, requires_grad=True) for _ in range(3)]
    leaked = probs.clone().requires_grad_(True)  # even targets that carry a graph get none back
    dino(students, list(leaked.split(2))).backward()
    assert leaked.grad is None and all(s.grad is not None and s.grad.abs().sum() > 0 for s in students)

    teacher_patches = torch.randn(2, 3, 5, requires_grad=True)
    student_patches = torch.randn(2, 3, 5, requires_grad=True)
    ibot = IBOTPatchLoss(5)
    ibot(student_patches, ibot.teacher_probabilities(teacher_patches, 0.04)).backward()
    assert teacher_patches.grad is None and student_patches.grad.abs().sum() > 0

    regression = TokenRegressionLoss(3, 4)
    targets = (torch.randn(2, 4, requires_grad=True), torch.randn(2, 3, 4, requires_grad=True))
    regression(torch.randn(2, 3), torch.randn(2, 3, 3), *targets).backward()
    assert all(t.grad is None for t in targets)
    assert all(p.grad is not None for p in regression.parameters())


def test_softmaxes_run_in_float32_under_bfloat16_autocast() -> None:
    torch.manual_seed(4)
    dino = DINOLoss(6)
    teacher = torch.randn(4, 6).bfloat16()
    students = [torch.randn(2, 6).bfloat16() for _ in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = dino.teacher_probabilities(teacher, 0.04)
        value = dino(students, list(probs.split(2)))
    assert probs.dtype == torch.float32 and value.dtype == torch.float32
    expected = dino([s.float() for s in students], list(dino.teacher_probabilities(teacher.float(), 0.04).split(2)))
    torch.testing.assert_close(value, expected)


# --- DINO head ---------------------------------------------------------------------------------------


def test_head_scores_are_cosines_to_unit_prototypes_with_trainable_g_at_one() -> None:
    torch.manual_seed(5)
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8)
    scores = head(torch.randn(5, 16))
    assert scores.shape == (5, 32) and scores.abs().max() <= 1.0 + 1e-6
    g = head.last_layer.parametrizations.weight.original0
    torch.testing.assert_close(g, torch.ones(32, 1))
    assert g.requires_grad  # DINOv2 fills g with 1 but, unlike DINO/iBOT's norm_last_layer, does not freeze it
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(32))
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 24), (24, 24), (24, 8)]
    assert all(torch.count_nonzero(m.bias) == 0 and m.weight.std() < 0.03 for m in linears)


def test_head_state_dict_keys_are_stable_and_dinov2_checkpoints_load() -> None:
    head = DINOHead(4, 6, hidden_dim=5, bottleneck_dim=3)
    assert list(head.state_dict()) == [
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
        "mlp.4.weight",
        "mlp.4.bias",
        "last_layer.parametrizations.weight.original0",
        "last_layer.parametrizations.weight.original1",
    ]
    legacy = {k: v.clone() for k, v in head.state_dict().items() if "last_layer" not in k}
    legacy["last_layer.weight_g"] = torch.full((6, 1), 2.0)
    legacy["last_layer.weight_v"] = torch.randn(6, 3)
    nested = torch.nn.ModuleDict({"dino_head": DINOHead(4, 6, hidden_dim=5, bottleneck_dim=3)})
    nested.load_state_dict({f"dino_head.{k}": v for k, v in legacy.items()})  # strict: nothing left over
    weight = nested["dino_head"].last_layer.weight
    torch.testing.assert_close(weight, 2.0 * F.normalize(legacy["last_layer.weight_v"], dim=1))


def test_head_builds_on_meta_and_deep_copies_after_a_forward() -> None:
    with torch.device("meta"):
        head = DINOHead(8, 10, hidden_dim=12, bottleneck_dim=4)
    assert head.last_layer.parametrizations.weight.original0.is_meta
    head.to_empty(device="cpu")
    head.reset_parameters()
    torch.testing.assert_close(head.last_layer.parametrizations.weight.original0, torch.ones(10, 1))
    scores = head(torch.randn(3, 8))
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(copy.deepcopy(head)(torch.ones(2, 8)), head(torch.ones(2, 8)))  # EMA copies


# --- two ranks ---------------------------------------------------------------------------------------


def _two_rank_worker(rank: int, port: int, results: dict) -> None:
    """Half the batch per rank: targets and centres must equal the single-process ones on the whole batch."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        logits, patches = torch.randn(6, 5), torch.randn(4, 3, 5)  # same on both ranks; each takes its half
        mine, my_patches = logits.chunk(2)[rank], patches.chunk(2)[rank]
        dino, ibot = DINOLoss(5), IBOTPatchLoss(5)
        dino.update_center(mine)
        ibot.update_center(my_patches)
        sk = DINOLoss(5, centering="sinkhorn_knopp").teacher_probabilities(mine, 0.05)
        sk_patches = IBOTPatchLoss(5, centering="sinkhorn_knopp").teacher_probabilities(my_patches, 0.05)
        head = DINOHead(5, 7, hidden_dim=6, bottleneck_dim=3)
        ddp = torch.nn.parallel.DistributedDataParallel(head)
        ddp(mine).pow(2).sum().backward()
        grad = head.last_layer.parametrizations.weight.original1.grad
        gathered = [torch.zeros_like(grad) for _ in range(2)]
        dist.all_gather(gathered, grad)
        results[rank] = {
            "center": dino.center,
            "ibot_center": ibot.center,
            "sk": sk,
            "sk_patches": sk_patches,
            "grads_equal": torch.equal(gathered[0], gathered[1]),
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_statistics_are_all_reduced_across_ranks_and_the_head_runs_under_ddp() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_two_rank_worker, args=(port, results), nprocs=2)
        results = dict(results)
    torch.manual_seed(0)
    logits, patches = torch.randn(6, 5), torch.randn(4, 3, 5)
    full_sk = _dinov2_sinkhorn(logits, 0.05).float()
    full_sk_patches = _dinov2_sinkhorn(patches.reshape(12, 5), 0.05).float().reshape(4, 3, 5)
    for rank in (0, 1):
        torch.testing.assert_close(results[rank]["center"], 0.1 * logits.mean(0, keepdim=True))
        torch.testing.assert_close(results[rank]["ibot_center"], 0.1 * patches.mean((0, 1)).view(1, 1, 5))
        torch.testing.assert_close(results[rank]["sk"], full_sk.chunk(2)[rank])
        torch.testing.assert_close(results[rank]["sk_patches"], full_sk_patches.chunk(2)[rank])
        assert results[rank]["grads_equal"]
