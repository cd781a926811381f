"""Feature extraction: input normalisation, seeded random encoders, HVC fusion, devices."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vcorr.errors import VcorrError
from vcorr.device import resolve_device
from vcorr.features import FeatureExtractor, fuse_hvc
from vcorr.models.config import feature_config
from vcorr.models.preprocess import normalise_frames
from vcorr.models import build_encoder
from vcorr.models.weights import save_weights


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(2, 48, 72, 3), dtype=np.uint8)


def test_imagenet_rgb_normalisation(frames):
    images = normalise_frames(frames, "imagenet_rgb")
    assert images.shape == (2, 3, 48, 72) and images.dtype == torch.float32
    pixel = frames[1, 5, 7].astype(np.float32) / 255
    expected = (pixel - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    np.testing.assert_allclose(images[1, :, 5, 7].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_lab_normalisation_matches_opencv_on_float_input(frames):
    images = normalise_frames(frames[0], "lab")
    lab = cv2.cvtColor(frames[0].astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    expected = (lab - np.float32([50, 0, 0])) / np.float32([50, 127, 127])
    np.testing.assert_allclose(images[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    # Known anchors: white is L = 100 (-> +1), black is L = 0 (-> -1), both with a = b = 0.
    anchors = normalise_frames(np.array([[[255, 255, 255], [0, 0, 0]]], dtype=np.uint8), "lab")
    np.testing.assert_allclose(anchors[0, :, 0, 0].numpy(), [1, 0, 0], atol=1e-4)
    np.testing.assert_allclose(anchors[0, :, 0, 1].numpy(), [-1, 0, 0], atol=1e-4)


def test_bad_frames_and_inputs_are_refused(frames):
    with pytest.raises(VcorrError, match="uint8"):
        normalise_frames(frames.astype(np.float32), "lab")
    with pytest.raises(VcorrError, match="uint8"):
        normalise_frames(frames[..., :1], "imagenet_rgb")
    with pytest.raises(VcorrError, match="normalisation"):
        normalise_frames(frames, "hsv")


def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == resolve_device("auto") == torch.device("cpu")
    with pytest.raises(VcorrError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(VcorrError, match="--device tpu: unknown device"):
        resolve_device("tpu")


def test_resolve_device_with_cuda_takes_this_processs_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "1")  # the second process of a torchrun node
    assert resolve_device("auto") == torch.device("cuda:1")
    assert resolve_device("cuda:3") == torch.device("cuda:3") and resolve_device("cpu") == torch.device("cpu")


def extractor_for(encoders, fusion=None, input="imagenet_rgb", **options) -> FeatureExtractor:
    """The extractor of a method config's `encoders`, `fusion` and `input` entries."""
    return FeatureExtractor(feature_config(encoders, fusion, input), **options)


def test_random_encoder_is_seeded_and_leaves_global_rng_alone(frames):
    config = [{"arch": "stt_r18_s8", "weights": None, "seed": 3}]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = extractor_for(config, input="lab", device="cpu")
    assert torch.equal(torch.rand(1), before)
    second = extractor_for(config, input="lab", device="cpu")
    other = extractor_for([{**config[0], "seed": 4}], input="lab", device="cpu")
    a, b, c = (extractor.extract(frames[0]) for extractor in (first, second, other))
    assert a.shape == (256, 6, 9) and a.dtype == torch.float32 and first.stride == 8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_extract_and_batch_agree_and_match_the_encoder(frames):
    extractor = extractor_for([{"arch": "crw_r18", "weights": None, "seed": 0}], device="cpu")
    batch = extractor.extract_batch(frames)
    single = extractor.extract(frames[1])
    # Batched and single convolutions may sum in different orders: equal to float rounding.
    torch.testing.assert_close(batch[1], single, rtol=1e-4, atol=1e-5 * batch.abs().max().item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = build_encoder("crw_r18").eval()
    with torch.inference_mode():
        expected = encoder(normalise_frames(frames, "imagenet_rgb"))
    assert torch.equal(batch, expected)


def test_hvc_fusion_shape_norm_and_formula(frames):
    config = [
        {"arch": "hvc_r18", "weights": None, "seed": 1},
        {"arch": "moco_r50", "weights": None, "seed": 2},
    ]
    extractor = extractor_for(config, fusion="hvc", device="cpu")
    fused = extractor.extract_batch(frames)
    assert fused.shape == (2, 256 + 1024, 6, 9) and extractor.channels == 1280
    torch.testing.assert_close(fused.norm(dim=1), torch.ones(2, 6, 9))
    images = normalise_frames(frames, "imagenet_rgb")
    with torch.inference_mode():
        hvc, moco = (network(images) for network in extractor.networks)
    # The HVC part carries 1.05 / sqrt(1.05^2 + 1) of the unit norm.
    torch.testing.assert_close(fused[:, :256].norm(dim=1), torch.full((2, 6, 9), 1.05 / np.hypot(1.05, 1)))
    expected = F.normalize(torch.cat((F.normalize(hvc, dim=1) * 1.05, F.normalize(moco, dim=1)), 1), dim=1)
    torch.testing.assert_close(fused, expected, rtol=0, atol=0)
    reweighted = extractor_for(config, fusion="hvc", device="cpu", fusion_weight=2.0).extract(frames[0])
    torch.testing.assert_close(reweighted[:256].norm(dim=0), torch.full((6, 9), 2 / np.hypot(2, 1)))


def test_fusion_refuses_unequal_maps():
    with pytest.raises(VcorrError, match="equal size"):
        fuse_hvc(torch.ones(1, 4, 6, 9), torch.ones(1, 4, 12, 18))


def test_config_errors(tmp_path):
    with pytest.raises(VcorrError, match="needs 2"):
        extractor_for([{"arch": "hvc_r18", "weights": None}], fusion="hvc", device="cpu")
    with pytest.raises(VcorrError, match="stride"):
        extractor_for(
            [{"arch": "stt_r18_s4", "weights": None, "seed": 0}, {"arch": "moco_r50", "weights": None, "seed": 0}],
            fusion="hvc", device="cpu",
        )
    weights = {"id": "hvc_release", "file": "hvc_coco.pth", "format": "hvc"}
    with pytest.raises(VcorrError, match="hvc_coco.pth"):
        extractor_for([{"arch": "hvc_r18", "weights": weights}], weights_root=tmp_path, device="cpu")


def test_weights_are_read_from_the_weights_root(tmp_path, frames):
    torch.manual_seed(7)
    trained = build_encoder("hvc_r18_train")
    save_weights(trained, tmp_path / "run1" / "encoder.pth", meta={"epoch": 3})
    weights = {"id": "run1", "file": "encoder.pth", "format": "vcorr"}
    extractor = extractor_for([{"arch": "hvc_r18", "weights": weights}], weights_root=tmp_path, device="cpu")
    report = extractor.reports[0]
    assert report.complete and not report.unexpected
    assert report.ignored and all(key.startswith("layer4.") for key in report.ignored)
    reference = build_encoder("hvc_r18")
    reference.load_state_dict({k: v for k, v in trained.state_dict().items() if not k.startswith("layer4.")})
    with torch.inference_mode():
        expected = reference.eval()(normalise_frames(frames[:1], "imagenet_rgb"))[0]
    assert torch.equal(extractor.extract(frames[0]), expected)


def test_amp_is_a_no_op_on_cpu(frames):
    config = [{"arch": "hvc_r18", "weights": None, "seed": 0}]
    amp = extractor_for(config, device="cpu", amp=True)
    assert amp.amp is False
    assert torch.equal(amp.extract(frames[0]), extractor_for(config, device="cpu").extract(frames[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_on_cuda_returns_float32_close_to_full_precision(frames):
    config = [{"arch": "hvc_r18", "weights": None, "seed": 0}, {"arch": "moco_r50", "weights": None, "seed": 1}]
    full = extractor_for(config, fusion="hvc", device="cuda").extract_batch(frames)
    half = extractor_for(config, fusion="hvc", device="cuda", amp=True)
    assert half.amp
    fused = half.extract_batch(frames)
    assert fused.dtype == torch.float32 and fused.device.type == "cuda"
    assert F.cosine_similarity(fused, full, dim=1).min().item() > 0.99


def test_weights_the_workflow_produces_are_read_from_their_path(tmp_path, frames):
    from vcorr.evaluation.methods import validate_method

    trained = tmp_path / "results" / "models" / "mine.pth"
    method = validate_method("mine", {
        "encoders": [{"arch": "crw_r18", "weights": {"path": str(trained), "format": "vcorr"}}],
        "input": "imagenet_rgb", "protocol": "crw",
        "benchmarks": {"davis17": {"cxt_size": 2, "radius": 4, "topk": 5, "temp": 0.05}},
    }, "mine.yaml")
    assert method.weight_files(tmp_path / "elsewhere") == [trained]  # the weights root does not apply
    with pytest.raises(VcorrError, match=r"mine\.pth: missing .*a file the workflow produces"):
        method.check_weights(tmp_path / "elsewhere")
    torch.manual_seed(5)
    save_weights(build_encoder("crw_r18"), trained)
    method.check_weights(tmp_path / "elsewhere")
    extractor = FeatureExtractor(method.features, weights_root=None, device="cpu")
    assert extractor.reports[0].complete
    assert method.as_dict()["encoders"] == [{"arch": "crw_r18", "weights": {"path": str(trained), "format": "vcorr"}}]


def test_sfc_fusion_weighs_the_fine_grained_features_by_its_lambda(frames):
    config = [
        {"arch": "hvc_r18", "weights": None, "seed": 1},
        {"arch": "moco_r50", "weights": None, "seed": 2},
    ]
    fused = extractor_for(config, fusion="sfc", device="cpu").extract(frames[0])
    # SFC's test_vos.py: normalize(cat(lambd * n(fc), n(semantic))), lambd 1.75 by default.
    torch.testing.assert_close(fused[:256].norm(dim=0), torch.full((6, 9), 1.75 / np.hypot(1.75, 1)))
