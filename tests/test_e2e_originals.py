"""End to end against the originals' own test pipelines (../shared/testdata/e2e, see its README):
`vcorr propagate` on a real video with random weights in the released file formats must give the
original's outputs on every frame, frame 0 included. Plus videowalk's load order (its test.py
loads the checkpoint after its train-mode dummy forward passes, so its BN statistics are the
file's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet as tv_resnet

from vcorr.cli import main

E2E = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "e2e"
JHMDB_CLIP = "swing_baseball/HowtoswingaBaseballbat_swing_baseball_f_nm_np1_le_bad_0"

needs_fixtures = pytest.mark.skipif(not E2E.is_dir(), reason=f"{E2E} absent (the e2e fixtures of ../shared/testdata)")


def _propagate(out: Path, benchmark: str, data_root: Path, method: str, weights: Path, *extra: str) -> None:
    torch.set_num_threads(1)
    args = ["propagate", "--benchmark", benchmark, "--data-root", str(data_root), "--method-config", method,
            "--weights-root", str(weights), "--out", str(out), "--device", "cpu", *extra]
    assert main(args) == 0


def _agreement(ours: Path, official: Path) -> dict[str, float]:
    """Per frame of the original's outputs, the fraction of pixels with the same id."""
    frames = sorted(official.glob("*.png"))
    assert frames
    agreement = {}
    for frame in frames:
        expected = np.array(Image.open(frame))
        got = np.array(Image.open(ours / frame.name))
        assert got.shape == expected.shape, frame.name
        agreement[frame.name] = float((got == expected).mean())
    return agreement


# (fixture, benchmark, data folder, method, weights fixture, sequence, frames, frame 0, minimum
# agreement). Frame 0 of Spa-then-Temp is the annotation's round trip through its input size.
ID_MAP_CASES = {
    "hvc-box-a": ("davis17", "davis", "hvc_release_coco", "hvc-box-a", "boxslic", 10, "00000.png", 0.9999),
    "stt-box-b": ("davis17", "davis", "stt_release_r18_s8", "stt-box-b", "boxslic", 10, "00000.png", 0.9995),
    "stt-vip-a": ("vip", "VIP_Fine", "stt_release_r18_s8", "stt-box-b", "videos338", 8, "000000.png", 0.9995),
}


@needs_fixtures
@pytest.mark.slow
@pytest.mark.parametrize("case_name", list(ID_MAP_CASES))
def test_ids_equal_the_originals_on_every_frame(tmp_path, case_name):
    benchmark, data, method, weights, sequence, frames, frame0, minimum = ID_MAP_CASES[case_name]
    case = E2E / case_name
    _propagate(tmp_path, benchmark, case / data, method, E2E / weights / "weights")
    agreement = _agreement(tmp_path / sequence, case / "official" / sequence)
    assert len(agreement) == frames
    assert agreement[frame0] == 1.0
    assert min(agreement.values()) >= minimum, agreement


def _jhmdb_distances(out: Path, *extra: str) -> np.ndarray:
    """Per joint and frame, the distance (px) of vcorr's coordinates to the original's."""
    if not E2E.is_dir():
        pytest.skip(f"{E2E} absent")
    case = E2E / "stt-jhmdb-a"
    # The fixture holds one clip of the split list: --sequences needs only that one on disk.
    _propagate(out, "jhmdb", case / "JHMDB", "stt_release_r18_s8", E2E / "stt-box-b" / "weights",
               "--sequences", JHMDB_CLIP, *extra)
    ours = np.load(out / f"{JHMDB_CLIP}.npy")
    official = np.load(case / "official" / f"{JHMDB_CLIP}.npy")
    assert ours.shape == official.shape == (2, 15, 10)
    return np.sqrt(((ours - official) ** 2).sum(0))  # [15, T]


@pytest.fixture(scope="module")
def jhmdb_distances(tmp_path_factory):
    return _jhmdb_distances(tmp_path_factory.mktemp("jhmdb"))


@pytest.mark.slow
def test_the_cuda_tie_rule_reaches_propagation_and_differs_on_this_clip(tmp_path, jhmdb_distances):
    """The fixture was made on the CPU: ties as CUDA's topk breaks them move a few joints
    (method option `ties`, recorded in the run record)."""
    cuda = _jhmdb_distances(tmp_path, "--set", "ties=cuda")
    assert cuda.max() > 0.5 >= jhmdb_distances.max()
    record = json.loads(next(tmp_path.glob(".vcorr-propagate*.json")).read_text())
    assert record["settings"]["ties"] == "cuda"


@pytest.mark.slow
def test_stt_jhmdb_a_frame0_and_first_propagated_frames(jhmdb_distances):
    # Frame 0 is read from the heat maps' round trip through 320x320 (it was 2.8 px off before).
    assert jhmdb_distances[:, 0].max() <= 1e-6
    assert jhmdb_distances[:, 1:3].max() <= 0.5


@pytest.mark.slow
def test_stt_jhmdb_a_every_joint_and_frame(jhmdb_distances):
    assert jhmdb_distances.max() <= 0.5


# --- videowalk: its test.py builds CRW (train-mode dummy passes: infer_dims, infer_downscale),
# then loads the checkpoint over every state entry, then eval(). ---


class _VideowalkTrunk(nn.Module):
    """videowalk's test-time encoder written out: resnet18 with reflect padding, layer3 and
    layer4 at stride 1 (`modify`), layer4 / fc / avgpool removed."""

    def __init__(self) -> None:
        super().__init__()
        network = tv_resnet.resnet18()
        for module in network.modules():
            if isinstance(module, nn.Conv2d) and sum(module.padding) > 0:
                module.padding_mode = "reflect"
        for module in network.layer3.modules():
            if isinstance(module, nn.Conv2d):
                module.stride = (1, 1)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
            setattr(self, name, getattr(network, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))))


def test_videowalk_checkpoint_loaded_after_its_dummy_passes(tmp_path):
    from vcorr.features import FeatureExtractor
    from vcorr.models.preprocess import normalise_frames
    from vcorr.evaluation.methods import load_method

    torch.manual_seed(0)
    source = _VideowalkTrunk()
    generator = torch.Generator().manual_seed(1)
    state = {}
    for key, value in source.state_dict().items():
        if key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(11)
        else:
            state[key] = torch.randn(value.shape, generator=generator) * 0.1
    checkpoint = {"model": {f"encoder.model.{key}": value for key, value in state.items()}}
    checkpoint["model"]["selfsim_fc.0.weight"] = torch.zeros(128, 256)
    (tmp_path / "crw").mkdir()
    torch.save(checkpoint, tmp_path / "crw" / "pretrained.pth")

    # test.py: CRW(args) runs train-mode dummy passes, then partial_load over every key, eval().
    videowalk = _VideowalkTrunk().train()
    with torch.no_grad():
        videowalk(torch.zeros(1, 3, 256, 256))
        videowalk(torch.zeros(1, 3, 320, 320))
    model_state = videowalk.state_dict()
    model_state.update({key[len("encoder.model."):]: value for key, value in checkpoint["model"].items()
                        if key.startswith("encoder.model.")})
    videowalk.load_state_dict(model_state)
    videowalk.eval()

    method = load_method("crw_release")
    assert method.options["zero_image_bn_update"] is False  # videowalk is not affected
    extractor = FeatureExtractor(method.features, tmp_path, device="cpu",
                                 zero_image_bn_update=method.options["zero_image_bn_update"])
    network = extractor.networks[0]
    for name, module in network.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.running_mean, state[f"{name}.running_mean"]), name
            assert torch.equal(module.running_var, state[f"{name}.running_var"]), name
            assert int(module.num_batches_tracked) == 11
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = videowalk(normalise_frames(frame, "imagenet_rgb"))[0]
    torch.testing.assert_close(extractor.extract(frame), expected, rtol=1e-5, atol=1e-5)
