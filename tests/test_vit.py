"""Vision Transformers (vcorr.models.vit) and their checkpoint formats (vcorr.models.weights):
the released architectures' parameter shapes, DINO's position-embedding arithmetic, and one
synthetic file per format with the real key names, wrapped as each repository saves it (the
encoder's own state dict renamed; unused parts as expanded constants, so files stay tiny)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from vcorr.errors import VcorrError
from vcorr.models import build_encoder
from vcorr.models.vit import VIT_ENCODERS, ViTSpec, VisionTransformer, resize_position_embedding
from vcorr.models.weights import load_weights

# Published facts (each repository's model definitions): (pos_embed, patch conv, heads, LayerScale).
RELEASED = {
    "vit_small16": ((1, 197, 384), (384, 3, 16, 16), 6, False),  # dino_deitsmall16_pretrain.pth
    "vit_small8": ((1, 785, 384), (384, 3, 8, 8), 6, False),  # dino_deitsmall8_pretrain.pth
    "vit_base16": ((1, 197, 768), (768, 3, 16, 16), 12, False),  # DINO / MAE / MoCo v3 ViT-B/16
    "vit_base8": ((1, 785, 768), (768, 3, 8, 8), 12, False),
    "mocov3_vits16": ((1, 197, 384), (384, 3, 16, 16), 12, False),  # its README: heads=12
    "dinov2_vits14": ((1, 1370, 384), (384, 3, 14, 14), 6, True),  # 518 px: a 37 x 37 grid
    "dinov2_vitb14": ((1, 1370, 768), (768, 3, 14, 14), 12, True),
    "cropmae_vits16": ((1, 197, 384), (384, 3, 16, 16), 6, False),
}


@pytest.mark.parametrize("arch", list(RELEASED))
def test_released_architectures_have_the_published_shapes(arch):
    position, patch, heads, layer_scale = RELEASED[arch]
    with torch.device("meta"):
        encoder = build_encoder(arch)
    state = encoder.state_dict()
    assert tuple(state["pos_embed"].shape) == position and tuple(state["patch_embed.proj.weight"].shape) == patch
    dim = position[-1]
    assert tuple(state["blocks.11.attn.qkv.weight"].shape) == (3 * dim, dim) and "blocks.12.norm1.weight" not in state
    assert tuple(state["blocks.0.mlp.fc1.weight"].shape) == (4 * dim, dim) and tuple(state["norm.weight"].shape) == (dim,)
    assert encoder.blocks[0].attn.heads == heads
    assert ("blocks.0.ls1.gamma" in state) == layer_scale == ("blocks.11.ls2.gamma" in state)
    assert "register_tokens" not in state and "mask_token" not in state and "head.weight" not in state
    assert encoder.stride == encoder.input_multiple == patch[-1] and encoder.out_channels == dim


def test_position_embeddings_are_resized_with_dinos_scale_factor():
    grid = torch.randn(1, 1 + 14 * 14, 8, generator=torch.Generator().manual_seed(0))
    resized = resize_position_embedding(grid, 30, 40, square=False)
    assert resized.shape == (1, 1 + 1200, 8) and torch.equal(resized[:, 0], grid[:, 0])
    patches = grid[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    by_factor = F.interpolate(patches, scale_factor=(30.1 / 14, 40.1 / 14), mode="bicubic")
    by_size = F.interpolate(patches, size=(30, 40), mode="bicubic")
    assert torch.equal(resized[:, 1:], by_factor.permute(0, 2, 3, 1).reshape(1, 1200, 8))
    assert not torch.allclose(resized[:, 1:], by_size.permute(0, 2, 3, 1).reshape(1, 1200, 8), atol=1e-4)
    # The stored grid is used as is only for its own grid on a square input (DINO's test).
    assert resize_position_embedding(grid, 14, 14, square=True) is grid
    assert not torch.equal(resize_position_embedding(grid, 14, 14, square=False), grid)


def test_features_are_the_patch_grid_after_the_last_norm_and_drop_the_remainder():
    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny16").eval()
    images = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        features = encoder(images)
        cropped = encoder(images[..., :64, :96])
    assert features.shape == (1, 192, 4, 6)
    # The patch embedding ignores pixels beyond the last whole patch, as DINO's stride-p conv does.
    torch.testing.assert_close(features, cropped, rtol=0, atol=0)
    assert torch.allclose(features.mean(1), torch.zeros(1, 4, 6), atol=1e-5)  # LayerNorm'd, bias 0 at init


# ---------------------------------------------------------------- checkpoint formats

TINY = ViTSpec("tiny_vit", patch=16, dim=24, heads=2, grid=4, depth=2)
TINY_LS = ViTSpec("tiny_vit_ls", patch=14, dim=24, heads=2, grid=4, depth=2, attention="sdpa", layer_scale=True)


def tiny(spec: ViTSpec, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return VisionTransformer(spec).state_dict()


def constant(*shape: int) -> torch.Tensor:
    return torch.zeros(()).expand(torch.Size(shape))


def loaded(spec: ViTSpec, path, format: str):
    encoder = VisionTransformer(spec)
    return encoder, load_weights(encoder, path, format)


def same(encoder: VisionTransformer, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, state[key]) for key, value in encoder.state_dict().items())


def dino_head(prefix: str) -> dict[str, torch.Tensor]:
    """DINOHead as main_dino.py saves it (out_dim 65536, bottleneck 256, weight-normed last layer)."""
    return {f"{prefix}head.mlp.0.weight": constant(2048, 24), f"{prefix}head.mlp.2.weight": constant(2048, 2048),
            f"{prefix}head.mlp.4.weight": constant(256, 2048), f"{prefix}head.last_layer.weight_g": constant(65536, 1),
            f"{prefix}head.last_layer.weight_v": constant(65536, 256)}


def test_dino_released_backbone_and_full_checkpoint(tmp_path):
    teacher, student = tiny(TINY, 1), tiny(TINY, 2)
    backbone = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(teacher, backbone)
    encoder, report = loaded(TINY, backbone, "dino")
    assert same(encoder, teacher) and report.complete and not report.unexpected
    # main_dino.py's checkpoint: the ViT teacher is not DDP-wrapped (backbone.*), the student is.
    full = tmp_path / "checkpoint.pth"
    torch.save({
        "student": {**{f"module.backbone.{k}": v for k, v in student.items()}, **dino_head("module.")},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **dino_head("")},
        "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16), "dino_loss": {"center": torch.zeros(1, 65536)},
    }, full)
    encoder, report = loaded(TINY, full, "dino")
    assert same(encoder, teacher) and len(report.ignored) == 5 and not report.unexpected
    assert set(report.ignored.values()) == {"DINO projection head"}
    encoder, report = loaded(TINY, full, "dino_student")
    assert same(encoder, student) and all(key.startswith("module.head.") for key in report.ignored)
    with pytest.raises(VcorrError, match=r"dino_deitsmall16_pretrain\.pth: no 'student' entry"):
        loaded(TINY, backbone, "dino_student")


def test_mae_and_cropmae_checkpoints(tmp_path):
    truth = tiny(TINY, 3)
    decoder = {"mask_token": constant(1, 1, 16), "decoder_embed.weight": constant(16, 24),
               "decoder_pos_embed": constant(1, 17, 16), "decoder_blocks.0.norm1.weight": constant(16),
               "decoder_blocks.0.cross_attn.q.weight": constant(16, 16),  # CropMAE's Siamese decoder
               "decoder_norm.weight": constant(16), "decoder_pred.weight": constant(768, 16)}
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": {**truth, **decoder}, "optimizer": {}, "epoch": 799, "scaler": {"scale": 1.0},
                "args": argparse.Namespace(model="mae_vit_base_patch16")}, path)
    encoder, report = loaded(TINY, path, "mae")
    assert same(encoder, truth) and set(report.ignored) == set(decoder) and not report.unexpected


def test_mocov3_checkpoint(tmp_path):
    base, momentum = tiny(TINY, 4), tiny(TINY, 5)
    state = {f"module.base_encoder.{k}": v for k, v in base.items()}
    state.update({"module.base_encoder.head.0.weight": constant(4096, 24), "module.base_encoder.head.1.running_mean": constant(4096),
                  "module.base_encoder.head.6.weight": constant(256, 4096)})
    state.update({f"module.momentum_encoder.{k}": v for k, v in momentum.items()})
    state.update({"module.predictor.0.weight": constant(4096, 256), "module.predictor.3.weight": constant(256, 4096)})
    path = tmp_path / "vit-s-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": state, "optimizer": {}, "scaler": {}}, path)
    encoder, report = loaded(TINY, path, "mocov3")
    assert same(encoder, base) and not report.unexpected
    assert sum(reason == "MoCo v3 projector" for reason in report.ignored.values()) == 3


def test_dinov2_checkpoint_with_layer_scale_and_without_registers(tmp_path):
    truth = tiny(TINY_LS, 6)
    assert "blocks.1.ls2.gamma" in truth
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save({**truth, "mask_token": torch.zeros(1, 24)}, path)
    encoder, report = loaded(TINY_LS, path, "dinov2")
    assert same(encoder, truth) and list(report.ignored) == ["mask_token"]
    registers = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save({**truth, "register_tokens": torch.zeros(1, 4, 24)}, registers)
    with pytest.raises(VcorrError, match=r"dinov2_vits14_reg4_pretrain\.pth: a DINOv2 model with register tokens"):
        loaded(TINY_LS, registers, "dinov2")


def test_wrong_and_truncated_vit_files_are_refused_naming_the_file(tmp_path):
    truth = tiny(TINY, 7)
    mocov3 = tmp_path / "vit-s-300ep.pth.tar"
    torch.save({"state_dict": {f"module.base_encoder.{k}": v for k, v in truth.items()}}, mocov3)
    with pytest.raises(VcorrError, match=r"vit-s-300ep\.pth\.tar: neither a DINO backbone .* \(found: state_dict\)"):
        loaded(TINY, mocov3, "dino")
    resnet = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save(build_encoder("hvc_r18").state_dict(), resnet)
    with pytest.raises(VcorrError, match=r"dino_resnet50_pretrain\.pth: \d+ weights of tiny_vit are not in this dino checkpoint"):
        loaded(TINY, resnet, "dino")
    with pytest.raises(VcorrError, match=r"vit-s-300ep\.pth\.tar: no 'model' entry"):
        loaded(TINY, mocov3, "mae")
    backbone = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.save(truth, backbone)
    with pytest.raises(VcorrError, match=r"dino_vitbase16_pretrain\.pth: key 'patch_embed.proj.weight' has shape .* but tiny_vit_ls"):
        loaded(TINY_LS, backbone, "dinov2")  # another patch size: refused
    truncated = tmp_path / "dino_deitsmall8_pretrain.pth"
    truncated.write_bytes(backbone.read_bytes()[: backbone.stat().st_size // 2])
    with pytest.raises(VcorrError, match=r"dino_deitsmall8_pretrain\.pth: not a readable PyTorch checkpoint"):
        loaded(TINY, truncated, "dino")


def test_every_vit_builds_with_its_registered_stride_and_width():
    for name, spec in VIT_ENCODERS.items():
        assert spec.grid == round(math.sqrt(RELEASED[name][0][1] - 1)) if name in RELEASED else spec.grid == 14
        with torch.device("meta"):
            encoder = build_encoder(name)
        assert (encoder.stride, encoder.out_channels) == (spec.patch, spec.dim), name
