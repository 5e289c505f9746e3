"""Held-out prototype agreement (``pipeline/distill/prototypes.py``): a student that is its teacher agrees on every
tile and patch, one whose prototypes are renumbered agrees on none, the centre moves the teacher's choice, and the
"before" heads are the ones a run starts from.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.distill.config import DistillConfig
from pipeline.distill.export import _agreement_section
from pipeline.distill.networks import make_heads, seeded_model
from pipeline.distill.prototypes import initial_heads, measure_prototypes, prototype_agreement
from pipeline.distill.train import DISTILL, Stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = DistillConfig.model_validate(
    {
        "models": {"teacher": "tiny-teacher", "student": "tiny-student", "random_teacher_layerscale": 1.0},
        "heads": {"prototypes": 32, "hidden_dim": 16, "dino_bottleneck_dim": 8, "ibot_bottleneck_dim": 8},
        "train": {"batch_size_total": 4, "iterations": 4, "iterations_per_epoch": 2, "seed": 5},
        "crops": {"global_crop_size": 28, "local_crop_size": 14, "local_crops_number": 1},
    }
)


@pytest.fixture(scope="module")
def teacher():
    backbone = seeded_model("tiny-teacher", 3, layerscale=1.0)
    torch.manual_seed(0)
    return backbone, make_heads(backbone.embed_dim, CONFIG.heads)


@pytest.fixture(scope="module")
def tiles():
    return torch.randint(0, 256, (12, 28, 28, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


ZERO_CENTRES = {"dino": torch.zeros(1, 32), "ibot": torch.zeros(1, 1, 32)}


def test_prototype_agreement_counts_matching_argmaxes_after_centring_and_its_chance():
    teacher = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    student = torch.tensor([[0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    plain = prototype_agreement(teacher, student, torch.zeros(3))
    # argmaxes: teacher 1, 0, 1, 2; student 1, 1, 1, 2 -> 3 of 4 agree; shares (1/4, 1/2, 1/4) · (0, 3/4, 1/4)
    assert plain == {"agreement": 0.75, "chance": pytest.approx(0.5 * 0.75 + 0.25 * 0.25), "teacher_prototypes": 3}
    # a centre that the teacher's prototype 1 exceeds by less than 1 hands tiles 0 and 2 to prototype 0
    centred = prototype_agreement(teacher, student, torch.tensor([0.0, 1.5, 0.0]))
    assert centred["agreement"] == 0.25 and centred["teacher_prototypes"] == 2


def test_a_student_that_is_its_teacher_agrees_on_every_tile_and_patch(teacher, tiles):
    backbone, heads = teacher
    figures = measure_prototypes(tiles, backbone, heads, ZERO_CENTRES, {"after": teacher})
    assert figures["dino_prototype_agreement_after"] == 1.0
    assert figures["ibot_prototype_agreement_after"] == 1.0
    assert figures["dino_prototype_chance_after"] <= 1.0 and figures["ibot_teacher_prototypes"] >= 1


def test_a_student_with_its_prototypes_renumbered_agrees_on_none(teacher, tiles):
    """The same network with prototype ``k`` moved to ``k + 1`` picks ``argmax + 1``: not one argmax matches,
    although the student is its teacher up to the numbering of the prototypes.
    """
    backbone, heads = teacher
    renumbered = make_heads(backbone.embed_dim, CONFIG.heads)
    renumbered.load_state_dict(heads.state_dict())
    with torch.no_grad():
        for head in renumbered.values():
            weight = head.last_layer.parametrizations.weight
            for part in (weight.original0, weight.original1):
                part.copy_(part.roll(1, dims=0))
    figures = measure_prototypes(tiles, backbone, heads, ZERO_CENTRES, {"after": (backbone, renumbered)})
    assert figures["dino_prototype_agreement_after"] == 0.0
    assert figures["ibot_prototype_agreement_after"] == 0.0


def test_the_heads_before_training_are_the_ones_the_distillation_stage_starts_from(teacher):
    backbone, heads = teacher
    before = torch.random.get_rng_state()
    drawn = initial_heads(CONFIG, 48)  # tiny-student is 48 wide
    assert torch.equal(torch.random.get_rng_state(), before)  # the run's own random stream is untouched
    stage = Stage(DISTILL, CONFIG, backbone, torch.device("cpu"), heads)
    started = stage.student.heads.state_dict()
    assert started.keys() == drawn.state_dict().keys()
    assert all(torch.equal(started[name], value) for name, value in drawn.state_dict().items())


def test_the_model_card_shows_the_prototype_agreement_beside_the_knn_figures():
    agreement = {
        "tiles": 75,
        "knn10_overlap_before": 0.8,
        "knn10_overlap_after": 0.82,
        "linear_cka_before": 0.9,
        "linear_cka_after": 0.91,
        "dino_prototype_agreement_before": 0.04,
        "dino_prototype_agreement_after": 0.31,
        "dino_prototype_chance_before": 0.03,
        "dino_prototype_chance_after": 0.05,
        "dino_teacher_prototypes": 17,
        "ibot_prototype_agreement_before": 0.02,
        "ibot_prototype_agreement_after": 0.2,
        "ibot_prototype_chance_before": 0.01,
        "ibot_prototype_chance_after": 0.02,
        "ibot_teacher_prototypes": 30,
    }
    card = _agreement_section(agreement, 10)
    assert "| 10-NN overlap | 0.8000 | 0.8200 |" in card
    assert "| prototype agreement, DINO head (class tokens) | 0.0400 | 0.3100 |" in card
    assert "| its chance (17 distinct teacher argmaxes) | 0.0300 | 0.0500 |" in card
    assert "| prototype agreement, iBOT head (patch tokens) | 0.0200 | 0.2000 |" in card
