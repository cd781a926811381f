"""Encoders: the seeds' shapes and strides, built by editing torchvision-layout ResNets in place;
vcorr's ResNet is torchvision's (names, seeded weights, RNG draws, forward) without importing it."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from vcorr.errors import VcorrError
from vcorr.models import ENCODERS, build_encoder
from vcorr.models import resnet
from vcorr.models.encoders import set_stage_stride


def forward(arch: str, shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(0)
    encoder = build_encoder(arch).eval()
    with torch.inference_mode():
        return encoder(torch.randn(*shape))


def test_hvc_inference_encoder_at_davis_size():
    assert forward("hvc_r18", (1, 3, 480, 854)).shape == (1, 256, 60, 107)


def test_hvc_training_encoder_shape():
    assert forward("hvc_r18_train", (2, 3, 256, 256)).shape == (2, 512, 32, 32)


@pytest.mark.parametrize(
    ("arch", "channels", "stride"),
    [
        ("moco_r50", 1024, 8),
        ("stt_r18_s8", 256, 8),
        ("stt_r50_s8", 1024, 8),
        ("stt_r18_s4", 256, 4),
        ("stt_r50_s4", 1024, 4),
        ("crw_r18", 256, 8),
    ],
)
def test_shapes_and_strides(arch: str, channels: int, stride: int):
    # Small inputs: the stride logic, not the size, is what is checked here.
    features = forward(arch, (1, 3, 96, 136))
    assert features.shape == (1, channels, 96 // stride, 136 // stride)
    encoder = build_encoder(arch)
    assert (encoder.stride, encoder.out_channels) == (stride, channels)


def test_odd_sizes_follow_convolution_arithmetic():
    # Each stride-2 step maps n -> floor((n - 1) / 2) + 1, as in the originals (854 -> 107).
    size = 61
    for _ in range(3):
        size = (size - 1) // 2 + 1
    assert forward("stt_r18_s8", (1, 3, 61, 61)).shape[-2:] == (size, size)


def test_strides_are_edited_on_torchvision_modules():
    encoder = build_encoder("hvc_r18")
    assert isinstance(encoder.layer3[0], resnet.BasicBlock)
    assert not hasattr(encoder, "layer4") and not hasattr(encoder, "fc")
    assert encoder.layer3[0].conv1.stride == (1, 1)
    assert encoder.layer3[0].downsample[0].stride == (1, 1)
    assert encoder.layer2[0].conv1.stride == (2, 2)
    assert all(conv.dilation == (1, 1) for conv in encoder.modules() if isinstance(conv, nn.Conv2d))
    r50 = build_encoder("stt_r50_s4")
    assert isinstance(r50.layer2[0], resnet.Bottleneck)
    assert r50.layer2[0].conv2.stride == (1, 1) and r50.layer2[0].downsample[0].stride == (1, 1)
    assert isinstance(r50.pool, nn.AvgPool2d) and build_encoder("stt_r18_s8").pool is None


def test_set_stage_stride_matches_a_torchvision_stride_two_stage():
    torch.manual_seed(0)
    network = resnet.resnet18()
    set_stage_stride(network.layer3, 1)
    set_stage_stride(network.layer3, 2)
    reference = resnet.resnet18()
    reference.load_state_dict(network.state_dict())
    x = torch.randn(1, 128, 16, 16)
    with torch.inference_mode():
        assert torch.equal(network.layer3.eval()(x), reference.layer3.eval()(x))


@pytest.mark.parametrize("depth", [18, 50])
def test_vcorrs_resnet_is_torchvisions_without_importing_it(depth):
    builders = {18: tv_resnet.resnet18, 50: tv_resnet.resnet50}
    torch.manual_seed(3)
    ours, our_rng = resnet.resnet(depth), torch.get_rng_state()
    torch.manual_seed(3)
    theirs, their_rng = builders[depth](), torch.get_rng_state()
    # The same modules in the same order, the same seeded weights, the same RNG draws.
    assert [(name, type(m).__name__) for name, m in ours.named_modules()] == [
        (name, type(m).__name__) for name, m in theirs.named_modules()]
    ours_state, their_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(their_state)
    assert all(torch.equal(ours_state[key], their_state[key]) for key in their_state)
    assert torch.equal(our_rng, their_rng)
    x = torch.randn(2, 3, 64, 64)
    for mode in (True, False):  # batch statistics, then the running ones the first call updated
        assert torch.equal(ours.train(mode)(x), theirs.train(mode)(x))
    with pytest.raises(ValueError, match="depth 34"):
        resnet.resnet(34)


def test_evaluation_and_its_encoders_do_not_import_torchvision():
    code = ("import sys, vcorr.evaluation.pipeline, vcorr.models.encoders, vcorr.train.stt; "
            "vcorr.models.encoders.build_encoder('crw_r18'); "
            "print(sorted(m for m in sys.modules if m.startswith('torchvision')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_state_dict_keeps_torchvision_names():
    keys = set(build_encoder("moco_r50").state_dict())
    torchvision_keys = set(tv_resnet.resnet50().state_dict())
    assert keys <= torchvision_keys
    assert keys == {key for key in torchvision_keys if not key.startswith(("layer4.", "fc."))}


def test_crw_uses_reflect_padding_like_videowalk():
    encoder = build_encoder("crw_r18")
    padded = [conv for conv in encoder.modules() if isinstance(conv, nn.Conv2d) and any(conv.padding)]
    assert padded and all(conv.padding_mode == "reflect" for conv in padded)
    # Reflect padding changes the output (same weights, zero padding = hvc_r18 layout).
    zero_padded = build_encoder("hvc_r18")
    zero_padded.load_state_dict(encoder.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert not torch.allclose(encoder.eval()(x), zero_padded.eval()(x))


def test_hvc_training_init():
    torch.manual_seed(0)
    encoder = build_encoder("hvc_r18_train")
    for block in [*encoder.layer1, *encoder.layer2, *encoder.layer3, *encoder.layer4]:
        assert torch.count_nonzero(block.bn2.weight) == 0
        assert torch.all(block.bn1.weight == 1)
    conv = encoder.layer4[1].conv2  # 3x3x512 -> std sqrt(2 / 4608)
    expected_std = math.sqrt(2.0 / (3 * 3 * 512))
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.02
    assert abs(conv.weight.mean().item()) < 0.1 * expected_std


def test_every_registered_encoder_builds_with_its_declared_stride():
    import vcorr.models.encoders as encoders_module

    # The documented table (module docstring): name -> (channels, stride), checked against a forward pass.
    documented = {}
    for line in encoders_module.__doc__.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in ENCODERS:
            documented[cells[0]] = (int(cells[5]), int(cells[6]))
    assert set(documented) == set(ENCODERS)
    for arch, spec in ENCODERS.items():
        encoder = build_encoder(arch).eval()
        assert encoder.spec is spec
        channels, stride = documented[arch]
        with torch.inference_mode():
            features = encoder(torch.zeros(1, 3, 64, 96))
        assert tuple(features.shape) == (1, channels, 64 // stride, 96 // stride), arch
        assert (encoder.stride, encoder.out_channels) == (stride, channels), arch


def test_unknown_arch_is_refused_with_the_known_names():
    with pytest.raises(VcorrError, match="hvc_r18"):
        build_encoder("resnet1000")
