"""Model registry, weights loading and embedding: tiny models on CPU, full-size ones on meta."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.models import (
    HOPTIMUS_MEAN,
    HOPTIMUS_STD,
    MODEL_SPECS,
    WeightsError,
    build_model,
    embed,
    embedding_dim,
    normalise,
    weights_sha256,
)
from pipeline.models.registry import seeded_initialisation

REGISTERS = 4
PATCH_TOKENS = (224 // 14) ** 2


def tiles(n: int = 2, seed: int = 0) -> torch.Tensor:
    """``n`` random uint8 RGB tiles ``[n, 224, 224, 3]``, as the tile stores hold them."""
    return torch.randint(0, 256, (n, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def tiny(name: str, seed: int = 0, weights: Path | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, weights).eval()


def to_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo timm's ``_convert_dinov2`` on a timm state dict, giving DINOv2's names and token layout."""
    state = dict(state)
    dim = state["cls_token"].shape[-1]
    # DINOv2 gives the class token a position that timm folds into it; keep that position at the
    # token's own scale (1e-6 at init) so the float round trip does not swamp the token.
    cls_position = torch.randn(1, 1, dim) * state["cls_token"].abs().max()
    out = {
        "cls_token": state.pop("cls_token") - cls_position,
        "pos_embed": torch.cat([cls_position, state.pop("pos_embed")], dim=1),
        "register_tokens": state.pop("reg_token"),
        "mask_token": torch.zeros(1, dim),
    }
    for key, value in state.items():
        out[key.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")] = value
    return out


@pytest.mark.parametrize("name", ["tiny-teacher", "tiny-student"])
def test_tiny_models_embed_to_the_right_width(name: str) -> None:
    model = tiny(name)
    with torch.inference_mode():
        both = embed(model, tiles(3))
        cls_only = embed(model, tiles(3), pooling="cls")
    assert both.shape == (3, 2 * model.embed_dim) == (3, embedding_dim(model))
    assert cls_only.shape == (3, model.embed_dim) == (3, embedding_dim(model, "cls"))
    assert torch.equal(both[:, : model.embed_dim], cls_only)


def test_tiny_teacher_is_larger_and_wider_than_tiny_student() -> None:
    teacher, student = build_model("tiny-teacher", device="meta"), build_model("tiny-student", device="meta")
    assert teacher.embed_dim != student.embed_dim
    assert sum(p.numel() for p in teacher.parameters()) > sum(p.numel() for p in student.parameters())


def test_embed_is_class_token_and_mean_of_patch_tokens_without_registers() -> None:
    model = tiny("tiny-teacher")
    images = tiles()
    mean = torch.tensor(HOPTIMUS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(HOPTIMUS_STD).view(1, 3, 1, 1)
    pixels = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.inference_mode():
        tokens = model.forward_features(pixels)
        embedding = embed(model, images)
    assert model.num_prefix_tokens == 1 + REGISTERS
    assert tokens.shape[1] == 1 + REGISTERS + PATCH_TOKENS
    expected = torch.cat([tokens[:, 0], tokens[:, 1 + REGISTERS :].mean(dim=1)], dim=-1)
    with_registers = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)
    torch.testing.assert_close(embedding, expected)
    assert not torch.allclose(embedding, with_registers)


def test_normalise_gives_float_nchw_in_the_model_statistics() -> None:
    model = build_model("tiny-student", device="meta")
    images = tiles(1)
    pixels = normalise(model, images)
    assert pixels.dtype == torch.float32 and pixels.shape == (1, 3, 224, 224)
    value = images[0, 10, 20, 1].item()
    assert pixels[0, 1, 10, 20].item() == pytest.approx((value / 255 - HOPTIMUS_MEAN[1]) / HOPTIMUS_STD[1], rel=1e-5)
    with pytest.raises(ValueError, match="uint8 RGB"):
        normalise(model, images.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="uint8 RGB"):
        normalise(model, images.float())


def test_h_optimus_0_on_meta_has_the_published_size() -> None:
    model = build_model("h-optimus-0", device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 1_134_774_272  # "1.1B"
    assert (model.embed_dim, len(model.blocks), model.patch_embed.num_patches) == (1536, 40, PATCH_TOKENS)
    assert model.blocks[0].mlp.fc1.out_features == 8192  # SwiGLU 4096, gate and value packed
    assert embedding_dim(model) == 3072
    assert model.pretrained_cfg["mean"] == HOPTIMUS_MEAN and model.pretrained_cfg["std"] == HOPTIMUS_STD
    tokens = model.forward_features(torch.empty(1, 3, 224, 224, device="meta"))
    assert tokens.shape == (1, 1 + REGISTERS + PATCH_TOKENS, 1536)


def test_h_optimus_0_has_the_keys_and_shapes_of_timms_vit_giant_reg4() -> None:
    """The released checkpoint loads into timm's vit_giant_patch14_reg4_dinov2; ours must match it."""
    ours = build_model("h-optimus-0", device="meta").state_dict()
    with torch.device("meta"):
        timms = timm.create_model("vit_giant_patch14_reg4_dinov2", img_size=224, init_values=1e-5, num_classes=0)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in timms.state_dict().items()}


def test_h0_mini_on_meta_has_the_published_size() -> None:
    model = build_model("h0-mini", device="meta")
    assert sum(p.numel() for p in model.parameters()) == 85_739_520  # "86M"
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (768, 12, 12)
    assert model.blocks[0].mlp.fc1.out_features == 4096  # DINOv2 SwiGLUFFNFused width 2048, packed
    assert model.blocks[0].mlp.fc2.in_features == 2048
    assert embedding_dim(model) == 1536 and embedding_dim(model, "cls") == 768
    tokens = model.forward_features(torch.empty(1, 3, 224, 224, device="meta"))
    assert tokens.shape == (1, 1 + REGISTERS + PATCH_TOKENS, 768)


def test_any_timm_name_builds_with_its_own_statistics() -> None:
    model = build_model("vit_small_patch14_reg4_dinov2", device="meta")
    assert model.num_features == 384 and model.num_prefix_tokens == 1 + REGISTERS
    assert model.pretrained_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    with pytest.raises(ValueError, match="unknown model"):
        build_model("no-such-model", device="meta")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("hf-hub:bioptimus/H0-mini", device="meta")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_saved_weights_load_back_to_the_same_embeddings(tmp_path: Path, suffix: str) -> None:
    original = tiny("tiny-student", seed=1)
    path = tmp_path / f"student{suffix}"
    state = {k: v.contiguous() for k, v in original.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    loaded = tiny("tiny-student", seed=2, weights=path)
    with torch.inference_mode():
        assert torch.equal(embed(loaded, tiles()), embed(original, tiles()))


def test_wrapped_and_prefixed_checkpoint_loads(tmp_path: Path) -> None:
    original = tiny("tiny-student", seed=1)
    path = tmp_path / "checkpoint.pth"
    wrapped = {f"module.{k}": v for k, v in original.state_dict().items()}
    torch.save({"model": wrapped, "epoch": torch.tensor(3)}, path)
    loaded = tiny("tiny-student", seed=2, weights=path)
    with torch.inference_mode():
        assert torch.equal(embed(loaded, tiles()), embed(original, tiles()))


def test_dinov2_teacher_checkpoint_loads(tmp_path: Path) -> None:
    """DINOv2's teacher_checkpoint.pth: backbone + heads under "teacher", blocks chunked, DINOv2 names."""
    original = tiny("tiny-teacher", seed=1)
    backbone = to_dinov2(original.state_dict())
    backbone = {k.replace("blocks.", "blocks.0.", 1): v for k, v in backbone.items()}  # block_chunks=1
    checkpoint = {f"backbone.{k}": v for k, v in backbone.items()}
    checkpoint["dino_head.last_layer.weight"] = torch.zeros(8, 4)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": checkpoint}, path)
    loaded = tiny("tiny-teacher", seed=2, weights=path)
    with torch.inference_mode():
        torch.testing.assert_close(embed(loaded, tiles()), embed(original, tiles()))


def test_plain_dinov2_state_dict_loads(tmp_path: Path) -> None:
    original = tiny("tiny-student", seed=1)
    path = tmp_path / "dinov2_vits14_reg4.safetensors"
    save_file(to_dinov2(original.state_dict()), path)
    loaded = tiny("tiny-student", seed=2, weights=path)
    with torch.inference_mode():
        torch.testing.assert_close(embed(loaded, tiles()), embed(original, tiles()))


def test_dinov2_weights_at_518_px_are_resampled_to_the_224_px_grid(tmp_path: Path) -> None:
    """DINOv2 releases its weights at 518 px; timm's conversion resamples their position grid."""
    spec = replace(MODEL_SPECS["tiny-student"], img_size=518)
    at_518 = timm.create_model(spec.architecture, **spec.timm_kwargs())
    path = tmp_path / "dinov2_518.safetensors"
    save_file(to_dinov2(at_518.state_dict()), path)
    loaded = tiny("tiny-student", weights=path)
    assert loaded.pos_embed.shape == (1, PATCH_TOKENS, 48)
    assert torch.equal(loaded.blocks[1].mlp.fc2.weight, at_518.blocks[1].mlp.fc2.weight)


def test_weights_of_another_model_raise_with_the_offending_keys(tmp_path: Path) -> None:
    path = tmp_path / "teacher.safetensors"
    save_file(build_model("tiny-teacher").state_dict(), path)
    with pytest.raises(WeightsError, match="wrong shape") as error:
        build_model("tiny-student", path)
    assert str(path) in str(error.value) and "pos_embed (file (1, 256, 96), model (1, 256, 48))" in str(error.value)
    assert "missing" not in str(error.value)  # tiny-teacher has one more block: unexpected, not missing
    assert "unexpected" in str(error.value) and "blocks.2." in str(error.value)


def test_missing_and_unexpected_keys_raise(tmp_path: Path) -> None:
    state = build_model("tiny-student").state_dict()
    state["head.weight"] = state.pop("norm.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"1 missing: norm\.weight; 1 unexpected: head\.weight"):
        build_model("tiny-student", path)


def test_unreadable_files_raise(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not weights")
    with pytest.raises(WeightsError, match="garbage.safetensors"):
        build_model("tiny-student", garbage)
    no_state = tmp_path / "optimizer.pt"
    torch.save({"optimizer": {"lr": torch.tensor(1.0), "step": 3}}, no_state)
    with pytest.raises(WeightsError, match="no state dict found"):
        build_model("tiny-student", no_state)
    with pytest.raises(FileNotFoundError):
        build_model("tiny-student", tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="meta"):
        build_model("tiny-student", garbage, device="meta")


def test_weights_sha256_is_the_file_checksum(tmp_path: Path) -> None:
    path = tmp_path / "student.safetensors"
    save_file(build_model("tiny-student").state_dict(), path)
    assert weights_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


class _RunsCodeWhenUnpickled:
    """What a hostile checkpoint carries: unpickling it calls ``exec`` with the attacker's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


@pytest.mark.parametrize("name", ["student.pt", "teacher_checkpoint.pth", "weights.bin"])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    state = {k: v.contiguous() for k, v in build_model("tiny-student").state_dict().items()}
    path = tmp_path / name
    torch.save({"model": state, "payload": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(WeightsError, match=r"refused: the checkpoint holds Python objects besides tensors \(exec\)"):
        build_model("tiny-student", path)
    assert not marker.exists()
    # The same file loaded the unsafe way would have run the payload: the test plants a real attack.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_random_weights_are_a_function_of_name_and_seed() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = build_model("tiny-student", init_seed=7).state_dict()
    assert torch.equal(torch.rand(1), before)  # the caller's random state is untouched
    torch.manual_seed(999)  # whatever the global state, the same seed gives the same model
    again = build_model("tiny-student", init_seed=7).state_dict()
    other = build_model("tiny-student", init_seed=8).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])
    assert seeded_initialisation("tiny-student", 0) != seeded_initialisation("tiny-teacher", 0)
