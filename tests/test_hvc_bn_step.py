"""HVC's post-load BatchNorm step (vcorr.models.hvc_bn) and its method option."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from vcorr.features import FeatureExtractor
from vcorr.evaluation.methods import load_method, validate_method
from vcorr.models.config import feature_config
from vcorr.models import build_encoder
from vcorr.models.weights import load_weights
from vcorr.models.hvc_bn import zero_image_bn_update


def _random_state(encoder: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict with every tensor random (BN statistics included), as a trained file has."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in encoder.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=generator) * 0.1
    return state


def _hvc_network_by_hand(depth: int, state: dict[str, torch.Tensor]) -> nn.Module:
    """HVC's network at `infer_dims` time, built independently of vcorr.models: a torchvision
    ResNet with the weights loaded, every conv of layer3 at stride 1 (HVC's `modify`), layer4,
    avgpool and fc removed (so their forward is skipped), conv1 .. layer3 in order."""
    network = tv_resnet.resnet18() if depth == 18 else tv_resnet.resnet50()
    missing, unexpected = network.load_state_dict(state, strict=False)
    assert not unexpected and all(key.startswith(("layer4.", "fc.")) for key in missing)
    for module in network.layer3.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
    return _Trunk(network)


class _Trunk(nn.Module):
    """conv1 .. layer3 of a torchvision ResNet (HVC's `_forward_impl` with layer4 = None)."""

    def __init__(self, network: tv_resnet.ResNet) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
            setattr(self, name, getattr(network, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


def _expected_statistics(trunk: nn.Sequential) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """The BN update written out: capture each BN's input on HVC's zero image (train-mode forward
    of a copy), then running <- 0.9 running + 0.1 batch (unbiased variance), count + 1."""
    before = {name: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
              for name, m in trunk.named_modules() if isinstance(m, nn.BatchNorm2d)}
    inputs = {}
    probe = copy.deepcopy(trunk).train()
    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: inputs.__setitem__(name, args[0].detach()))
        for name, module in probe.named_modules()
        if isinstance(module, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        probe(torch.zeros(1, 3, 1, 256, 256).flatten(1, 2))  # HVC's dummy [1, 3, 1, 256, 256] via From3D
    for hook in hooks:
        hook.remove()
    expected = {}
    for name, (mean, var, count) in before.items():
        x = inputs[name].double()
        batch_mean = x.mean(dim=(0, 2, 3))
        batch_var = x.var(dim=(0, 2, 3), unbiased=True)
        expected[name] = (0.9 * mean.double() + 0.1 * batch_mean, 0.9 * var.double() + 0.1 * batch_var, count + 1)
    return expected


@pytest.mark.parametrize("arch, depth", [("hvc_r18", 18), ("moco_r50", 50)])
def test_zero_image_bn_update_matches_hvc_step_done_by_hand(arch, depth):
    torch.manual_seed(0)
    encoder = build_encoder(arch)
    state = _random_state(encoder, seed=3)
    report = load_weights(encoder, state, "hvc")
    assert report.complete
    trunk = _hvc_network_by_hand(depth, state)
    expected = _expected_statistics(trunk)

    encoder.eval()
    zero_image_bn_update(encoder)
    assert not encoder.training  # mode restored
    bns = {name: module for name, module in encoder.named_modules() if isinstance(module, nn.BatchNorm2d)}
    assert sorted(bns) == sorted(expected)
    moved = 0
    for name, module in bns.items():
        mean, var, count = expected[name]
        torch.testing.assert_close(module.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(module.running_var.double(), var, rtol=1e-5, atol=1e-6)
        assert int(module.num_batches_tracked) == count == 8
        moved += int(not torch.allclose(module.running_mean, state[f"{name}.running_mean"]))
    assert moved == len(bns)  # every layer's statistics changed: the check can fail


def test_step_changes_features_and_off_equals_plain_load(tmp_path):
    encoder = build_encoder("hvc_r18")
    torch.save(_random_state(encoder, seed=5), tmp_path / "hvc.pth")
    entry = [{"arch": "hvc_r18", "weights": {"id": ".", "file": "hvc.pth", "format": "hvc"}}]
    frame = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)

    plain = build_encoder("hvc_r18")
    load_weights(plain, tmp_path / "hvc.pth", "hvc")
    from vcorr.models.preprocess import normalise_frames

    with torch.no_grad():
        expected = plain.eval()(normalise_frames(frame, "imagenet_rgb"))[0]

    features = feature_config(entry, None, "imagenet_rgb")
    off = FeatureExtractor(features, tmp_path, device="cpu", zero_image_bn_update=False)
    on = FeatureExtractor(features, tmp_path, device="cpu", zero_image_bn_update=True)
    assert torch.equal(off.extract(frame), expected)
    assert not torch.allclose(on.extract(frame), expected, atol=1e-3)


def test_option_defaults_and_override():
    assert load_method("hvc_release_coco").options["zero_image_bn_update"] is True
    assert load_method("crw_release").options["zero_image_bn_update"] is False
    assert load_method("stt_release_r18_s8").options["zero_image_bn_update"] is False
    settings = load_method("hvc_release_coco").settings_for("davis17", ["zero_image_bn_update=false"])
    assert settings.options == {"zero_image_bn_update": False, "ties": "cpu"}
    assert settings.as_dict()["zero_image_bn_update"] is False
    assert load_method("hvc_release_coco").as_dict()["zero_image_bn_update"] is True

    data = {
        "encoders": [{"arch": "crw_r18", "weights": None, "seed": 0}], "input": "imagenet_rgb", "protocol": "crw",
        "benchmarks": {"davis17": {"cxt_size": 2, "radius": 3, "topk": 2, "temp": 0.1}},
    }
    assert validate_method("m", {**data, "zero_image_bn_update": True}, "f.yaml").options["zero_image_bn_update"]
    from vcorr.errors import VcorrError

    with pytest.raises(VcorrError, match="zero_image_bn_update must be a bool"):
        validate_method("m", {**data, "zero_image_bn_update": "yes"}, "f.yaml")
