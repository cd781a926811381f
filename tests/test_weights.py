"""Checkpoint import: synthetic files with the real key names and shapes of each released format.

Each synthetic file is built from a random torchvision-layout state dict (the "truth"), renamed
and wrapped the way the seed saves it, written with torch.save and read back through
`load_weights`. Tensors of parts the encoder never uses (teachers, key encoders, queues, layer4 of
big ResNets) keep their real shapes but are stored as expanded constants, so files stay tiny.
"""

from __future__ import annotations

import argparse
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet

from vcorr.errors import VcorrError
from vcorr.models import build_encoder
from vcorr.models.weights import load_weights, save_weights


def torchvision_keys(depth: int) -> dict[str, torch.Size]:
    network = tv_resnet.resnet18() if depth == 18 else tv_resnet.resnet50()
    return {key: value.shape for key, value in network.state_dict().items()}


def random_state(depth: int, seed: int, constant_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict with random values (sane BN statistics)."""
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in torchvision_keys(depth).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(int(torch.randint(1, 10_000, (), generator=generator)))
        elif key.startswith(constant_prefixes):
            state[key] = torch.full((), 0.5).expand(shape)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


def constant(*shape: int) -> torch.Tensor:
    return torch.zeros(()).expand(torch.Size(shape))


def without(state: dict, *prefixes: str) -> dict:
    return OrderedDict((key, value) for key, value in state.items() if not key.startswith(prefixes))


def training_args() -> argparse.Namespace:
    return argparse.Namespace(lr=1e-3, epochs=20, remove_stride_layers=("layer3", "layer4"), seed=42)


def save_training_checkpoint(path: Path, model: OrderedDict, epoch: int) -> Path:
    """A checkpoint as HVC's (and SFC's) training loop saves it: the whole model, the optimiser, the
    epoch and the argparse namespace (which is why `weights_only` loading needs allow-listing)."""
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": epoch,
                "args": training_args()}, path)
    return path


def reference_features(truth, depth, x, *, stride_one, stem_pool="max", last="layer3", reflect=False):
    """The encoder built by hand, the seeds' way: torchvision ResNet, every conv of the listed
    stages set to stride 1, optional reflect padding, forward cut after `last`."""
    network = tv_resnet.resnet18() if depth == 18 else tv_resnet.resnet50()
    network.load_state_dict(truth)
    for stage in stride_one:
        for module in getattr(network, stage).modules():
            if isinstance(module, nn.Conv2d):
                module.stride = (1, 1)
    if reflect:
        for module in network.modules():
            if isinstance(module, nn.Conv2d) and sum(module.padding) > 0:
                module.padding_mode = "reflect"
    network.eval()
    with torch.inference_mode():
        y = network.relu(network.bn1(network.conv1(x)))
        if stem_pool == "max":
            y = network.maxpool(y)
        elif stem_pool == "mean":
            y = F.avg_pool2d(y, kernel_size=3, stride=2, padding=1)
        for stage in ("layer1", "layer2", "layer3", "layer4")[: int(last[-1])]:
            y = getattr(network, stage)(y)
    return y


def assert_landed(encoder, truth):
    """Every parameter and buffer of the encoder equals the truth tensor of the same name."""
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, truth[key].to(value.dtype)), key


def assert_accounted(report, checkpoint_state):
    """Every checkpoint key is loaded, ignored (with a reason) or reported unexpected."""
    accounted = len(report.loaded) + len(report.ignored) + len(report.unexpected)
    assert accounted == len(checkpoint_state)
    assert all(report.ignored.values())


def features(encoder, x):
    with torch.inference_mode():
        return encoder.eval()(x)


# ---------------------------------------------------------------- HVC


def hvc_heads() -> dict[str, torch.Tensor]:
    heads = {}
    for name, in_dim in (("online_space_projector", 512), ("target_space_projector", 512), ("space_predictor", 256)):
        for conv, shape in (("conv1", (256, in_dim, 1, 1)), ("conv2", (256, 256, 1, 1)), ("conv3", (256, 256, 1, 1))):
            heads[f"{name}.block.{conv}.weight"] = torch.randn(shape)
            heads[f"{name}.block.{conv}.bias"] = torch.randn(shape[0])
        for bn in ("bn1", "bn2"):
            for buffer in ("weight", "bias", "running_mean", "running_var"):
                heads[f"{name}.block.{bn}.{buffer}"] = torch.rand(256)
            heads[f"{name}.block.{bn}.num_batches_tracked"] = torch.tensor(5)
    heads["flow.conv1.weight"], heads["flow.conv1.bias"] = torch.randn(256, 512, 1, 1), torch.randn(256)
    heads["flow.conv2.weight"], heads["flow.conv2.bias"] = torch.randn(2, 256, 1, 1), torch.randn(2)
    for bn, width in (("bn1", 256), ("bn2", 2)):
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            heads[f"flow.{bn}.{buffer}"] = torch.rand(width)
        heads[f"flow.{bn}.num_batches_tracked"] = torch.tensor(5)
    return heads


@pytest.fixture(scope="module")
def hvc_truth():
    # HVC's online encoder is built with head_type='early_return': no fc, no avgpool.
    return random_state(18, seed=1)


def test_hvc_training_checkpoint(tmp_path, hvc_truth):
    model = OrderedDict((f"online_encoder.{k}", v) for k, v in without(hvc_truth, "fc.").items())
    model.update((f"target_encoder.{k}", v + 1) for k, v in without(hvc_truth, "fc.").items() if v.is_floating_point())
    model.update(hvc_heads())
    path = save_training_checkpoint(tmp_path / "hvc_epoch_20.pth", model, 20)

    encoder = build_encoder("hvc_r18")
    report = load_weights(encoder, path, "hvc")
    assert_landed(encoder, hvc_truth)
    assert_accounted(report, model)
    assert not report.missing and not report.unexpected and not report.notes
    assert {key for key in report.ignored if key.startswith("online_encoder.")} == {
        f"online_encoder.{key}" for key in hvc_truth if key.startswith("layer4.")
    }
    assert any(key.startswith("target_encoder.") for key in report.ignored)
    assert report.ignored["flow.conv1.weight"]

    x = torch.randn(1, 3, 64, 80)
    expected = reference_features(hvc_truth, 18, x, stride_one=("layer3", "layer4"))
    assert (features(encoder, x) - expected).abs().max().item() == 0

    # The training encoder keeps layer4.
    trainer = build_encoder("hvc_r18_train")
    report = load_weights(trainer, path, "hvc")
    assert_landed(trainer, hvc_truth)
    expected = reference_features(hvc_truth, 18, x, stride_one=("layer3", "layer4"), last="layer4")
    assert (features(trainer, x) - expected).abs().max().item() == 0


@pytest.mark.parametrize("data_parallel", [False, True])
def test_hvc_released_encoder(tmp_path, hvc_truth, data_parallel):
    # core/convert_pretrain.py: torch.save(OrderedDict of online_encoder keys, prefix stripped).
    state = without(hvc_truth, "fc.")
    if data_parallel:
        state = OrderedDict((f"module.{k}", v) for k, v in state.items())
    path = tmp_path / "hvc_coco.pth"
    torch.save(state, path)
    encoder = build_encoder("hvc_r18")
    report = load_weights(encoder, path, "hvc")
    assert_landed(encoder, hvc_truth)
    assert_accounted(report, state)
    assert not report.missing and not report.unexpected
    assert len(report.ignored) == sum(key.startswith(("layer4.", "module.layer4.")) for key in state)
    x = torch.randn(1, 3, 72, 56)
    expected = reference_features(hvc_truth, 18, x, stride_one=("layer3", "layer4"))
    assert (features(encoder, x) - expected).abs().max().item() == 0


# ---------------------------------------------------------------- MoCo


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_moco_checkpoint(tmp_path, version):
    truth = random_state(50, seed=2, constant_prefixes=("layer4.", "fc."))
    head = (
        {"fc.weight": constant(128, 2048), "fc.bias": constant(128)}
        if version == "v1"
        else {"fc.0.weight": constant(2048, 2048), "fc.0.bias": constant(2048),
              "fc.2.weight": constant(128, 2048), "fc.2.bias": constant(128)}
    )
    encoder_q = OrderedDict(without(truth, "fc."))
    encoder_q.update(head)
    state = OrderedDict((f"module.encoder_q.{k}", v) for k, v in encoder_q.items())
    state.update((f"module.encoder_k.{k}", constant(*v.shape)) for k, v in encoder_q.items())
    state["module.queue"] = constant(128, 65536)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / f"moco_{version}_pretrain.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {}}, path)

    encoder = build_encoder("moco_r50")
    report = load_weights(encoder, path, "moco")
    assert_landed(encoder, truth)
    assert_accounted(report, state)
    assert not report.missing and not report.unexpected
    ignored_q = {key for key in report.ignored if key.startswith("module.encoder_q.")}
    assert ignored_q == {f"module.encoder_q.{k}" for k in encoder_q if k.startswith(("layer4.", "fc."))}
    assert "module.queue" in report.ignored and "module.encoder_k.conv1.weight" in report.ignored

    x = torch.randn(1, 3, 40, 56)
    expected = reference_features(truth, 50, x, stride_one=("layer3", "layer4"))
    assert (features(encoder, x) - expected).abs().max().item() == 0


# ---------------------------------------------------------------- Spa-then-Temp


def mmcv_name(key: str) -> str:
    """torchvision key -> the mmcv ConvModule key Spa-then-Temp's ResNet saves."""
    key = re.sub(r"^conv1\.", "conv1.conv.", key)
    key = re.sub(r"^bn1\.", "conv1.bn.", key)
    key = re.sub(r"\.downsample\.0\.", ".downsample.conv.", key)
    key = re.sub(r"\.downsample\.1\.", ".downsample.bn.", key)
    key = re.sub(r"\.(conv\d)\.weight$", r".\1.conv.weight", key)
    return re.sub(r"\.bn(\d)\.", r".conv\1.bn.", key)


def test_mmcv_names_are_the_real_ones():
    names = {mmcv_name(key) for key in torchvision_keys(50)}
    for real in (
        "conv1.conv.weight", "conv1.bn.running_var", "conv1.bn.num_batches_tracked",
        "layer1.0.conv1.conv.weight", "layer1.0.conv3.bn.bias", "layer3.5.conv2.bn.running_mean",
        "layer2.0.downsample.conv.weight", "layer2.0.downsample.bn.weight",
    ):
        assert real in names


def stt_checkpoint(depth: int, seed: int, numpy_meta: bool = False):
    truth = random_state(depth, seed=seed, constant_prefixes=("layer4.", "fc.") if depth == 50 else ("fc.",))
    state = OrderedDict((f"backbone.{mmcv_name(k)}", v) for k, v in without(truth, "fc.").items())
    state.update(
        (f"backbone_t.{mmcv_name(k)}", constant(*shape))
        for k, shape in torchvision_keys(50).items() if not k.startswith("fc.")
    )
    meta = {"mmcv_version": "1.3.18", "epoch": 800, "iter": 44000, "config": "model = dict(...)"}
    if numpy_meta:
        meta["best_score"] = np.float64(0.7)
    return truth, {"meta": meta, "state_dict": state, "optimizer": {}}


@pytest.mark.parametrize(
    ("arch", "depth", "stride_one", "stem_pool"),
    [
        ("stt_r18_s8", 18, ("layer4",), "none"),
        ("stt_r18_s4", 18, ("layer2", "layer3", "layer4"), "mean"),
        ("stt_r50_s8", 50, ("layer4",), "none"),
        ("stt_r50_s4", 50, ("layer2", "layer3", "layer4"), "mean"),
    ],
)
def test_spa_then_temp_checkpoint(tmp_path, arch, depth, stride_one, stem_pool):
    truth, checkpoint = stt_checkpoint(depth, seed=3)
    path = tmp_path / f"{arch}.pth"
    torch.save(checkpoint, path)
    encoder = build_encoder(arch)
    report = load_weights(encoder, path, "stt")
    assert_landed(encoder, truth)
    assert_accounted(report, checkpoint["state_dict"])
    assert not report.missing and not report.unexpected
    student_ignored = {key for key in report.ignored if key.startswith("backbone.")}
    assert student_ignored == {f"backbone.{mmcv_name(k)}" for k in truth if k.startswith("layer4.")}
    assert all(key in report.ignored for key in checkpoint["state_dict"] if key.startswith("backbone_t."))

    x = torch.randn(1, 3, 40, 48)
    expected = reference_features(truth, depth, x, stride_one=stride_one, stem_pool=stem_pool)
    assert (features(encoder, x) - expected).abs().max().item() == 0


def test_spa_then_temp_r50_file_into_r18_is_refused(tmp_path):
    _, checkpoint = stt_checkpoint(50, seed=4)
    path = tmp_path / "stt_r50.pth"
    torch.save(checkpoint, path)
    with pytest.raises(VcorrError, match=r"stt_r50\.pth.*backbone\.layer1\.0\.conv1\.conv\.weight.*shape"):
        load_weights(build_encoder("stt_r18_s8"), path, "stt")


def test_pickled_python_objects_load_with_a_note(tmp_path):
    truth, checkpoint = stt_checkpoint(18, seed=5, numpy_meta=True)
    path = tmp_path / "stt_meta.pth"
    torch.save(checkpoint, path)
    encoder = build_encoder("stt_r18_s8")
    with pytest.warns(UserWarning, match="full unpickling"):
        report = load_weights(encoder, path, "stt")
    assert any("numpy" in note for note in report.notes)
    assert_landed(encoder, truth)


# ---------------------------------------------------------------- videowalk / CRW


@pytest.mark.parametrize("wrapped_convs", [True, False])
def test_crw_checkpoint(tmp_path, wrapped_convs):
    truth = random_state(18, seed=6)
    model = OrderedDict()
    for key, value in without(truth, "fc.").items():
        if wrapped_convs and re.search(r"(^|\.)conv[12]\.weight$", key):
            key = key[: -len("weight")] + "1.weight"  # e.g. layer1.0.conv1.1.weight
        model[f"encoder.model.{key}"] = value
    model["selfsim_fc.0.weight"], model["selfsim_fc.0.bias"] = torch.randn(128, 512), torch.randn(128)
    if wrapped_convs:
        assert "encoder.model.layer1.0.conv1.1.weight" in model and "encoder.model.conv1.1.weight" in model
    path = tmp_path / "pretrained.pth"
    torch.save({"model": model, "optimizer": {}, "lr_scheduler": {"milestones": [], "gamma": 0.1},
                "epoch": 9, "args": training_args()}, path)

    encoder = build_encoder("crw_r18")
    report = load_weights(encoder, path, "crw")
    assert_landed(encoder, truth)
    assert_accounted(report, model)
    assert not report.missing and not report.unexpected and not report.notes
    assert report.ignored["selfsim_fc.0.weight"]
    assert sum(key.startswith("encoder.model.layer4.") for key in report.ignored) == sum(
        key.startswith("layer4.") for key in truth
    )
    x = torch.randn(1, 3, 48, 64)
    expected = reference_features(truth, 18, x, stride_one=("layer3", "layer4"), reflect=True)
    assert (features(encoder, x) - expected).abs().max().item() == 0


def test_crw_duplicate_names_are_refused(tmp_path):
    model = OrderedDict((f"encoder.model.{k}", v) for k, v in without(random_state(18, 7), "fc.").items())
    model["encoder.model.conv1.1.weight"] = model["encoder.model.conv1.weight"]
    path = tmp_path / "both.pth"
    torch.save({"model": model}, path)
    with pytest.raises(VcorrError, match="both map to 'conv1.weight'"):
        load_weights(build_encoder("crw_r18"), path, "crw")


# ---------------------------------------------------------------- vcorr's own format


def test_vcorr_round_trip(tmp_path):
    torch.manual_seed(8)
    trained = build_encoder("hvc_r18_train")
    path = tmp_path / "out" / "encoder.pth"
    save_weights(trained, path, meta={"method": "hvc", "epoch": 20})
    saved = torch.load(path, weights_only=True)
    assert (saved["format"], saved["version"], saved["arch"]) == ("vcorr-encoder", 1, "hvc_r18_train")
    assert saved["meta"] == {"method": "hvc", "epoch": 20}
    assert not list(path.parent.glob(".*tmp"))

    same = build_encoder("hvc_r18_train")
    report = load_weights(same, path, "vcorr")
    assert_landed(same, trained.state_dict())
    assert not report.missing and not report.ignored and not report.unexpected

    inference = build_encoder("hvc_r18")
    report = load_weights(inference, path, "vcorr")
    assert_landed(inference, trained.state_dict())
    assert set(report.ignored) == {key for key in trained.state_dict() if key.startswith("layer4.")}


# ---------------------------------------------------------------- refusals and reports


def test_shape_mismatch_names_file_and_key(tmp_path):
    state = OrderedDict((f"module.encoder_q.{k}", v) for k, v in without(random_state(18, 9), "fc.").items())
    path = tmp_path / "moco_r18.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(VcorrError, match=r"moco_r18\.pth\.tar.*module\.encoder_q\.layer1\.0\.conv1\.weight"):
        load_weights(build_encoder("moco_r50"), path, "moco")


def test_unexpected_keys_are_reported(tmp_path, hvc_truth):
    state = without(hvc_truth, "fc.")
    state["layer3.0.attention.weight"] = torch.randn(4)
    state["projector.weight"] = torch.randn(4)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    encoder = build_encoder("hvc_r18")
    report = load_weights(encoder, path, "hvc")
    assert sorted(report.unexpected) == ["layer3.0.attention.weight", "projector.weight"]
    assert_landed(encoder, hvc_truth)
    assert "2 unexpected" in report.summary()


def test_missing_keys_are_refused_unless_not_strict(tmp_path, hvc_truth):
    state = without(hvc_truth, "fc.", "layer3.1.conv2.")
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(VcorrError, match=r"partial\.pth.*layer3\.1\.conv2\.weight"):
        load_weights(build_encoder("hvc_r18"), path, "hvc")
    encoder = build_encoder("hvc_r18")
    before = encoder.layer3[1].conv2.weight.clone()
    report = load_weights(encoder, path, "hvc", strict=False)
    assert report.missing == ["layer3.1.conv2.weight"] and not report.complete
    assert torch.equal(encoder.layer3[1].conv2.weight, before)
    assert torch.equal(encoder.layer3[0].conv1.weight, hvc_truth["layer3.0.conv1.weight"])


def test_missing_batch_counters_are_not_fatal(tmp_path, hvc_truth):
    state = OrderedDict((k, v) for k, v in without(hvc_truth, "fc.").items() if not k.endswith("num_batches_tracked"))
    path = tmp_path / "old.pth"
    torch.save(state, path)
    report = load_weights(build_encoder("hvc_r18"), path, "hvc")
    assert report.complete and report.missing and all(k.endswith("num_batches_tracked") for k in report.missing)


def test_unreadable_and_wrong_files(tmp_path, hvc_truth):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(VcorrError, match=r"notes\.txt.*not a readable PyTorch checkpoint"):
        load_weights(build_encoder("hvc_r18"), text, "hvc")
    with pytest.raises(VcorrError, match=r"absent\.pth.*not found"):
        load_weights(build_encoder("hvc_r18"), tmp_path / "absent.pth", "hvc")
    release = tmp_path / "hvc_coco.pth"
    torch.save(without(hvc_truth, "fc."), release)
    with pytest.raises(VcorrError, match=r"hvc_coco\.pth.*no 'state_dict' entry"):
        load_weights(build_encoder("moco_r50"), release, "moco")
    with pytest.raises(VcorrError, match=r"hvc_coco\.pth.*not a vcorr encoder checkpoint"):
        load_weights(build_encoder("hvc_r18"), release, "vcorr")
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.ones(3), tensor_file)
    with pytest.raises(VcorrError, match=r"tensor\.pth.*not a checkpoint"):
        load_weights(build_encoder("hvc_r18"), tensor_file, "hvc")
    with pytest.raises(VcorrError, match="unknown checkpoint format"):
        load_weights(build_encoder("hvc_r18"), release, "caffe")


# ---------------------------------------------------------------- the compared methods' releases


def byol_mlp(prefix: str, in_dim: int, inner: int, out: int) -> dict[str, torch.Tensor]:
    """SFC's MLP2d (1x1 conv, BN, ReLU, 1x1 conv) under `prefix`, real shapes, constant values."""
    mlp = {f"{prefix}.linear1.weight": constant(inner, in_dim, 1, 1), f"{prefix}.linear1.bias": constant(inner),
           f"{prefix}.linear2.weight": constant(out, inner, 1, 1), f"{prefix}.linear2.bias": constant(out)}
    for buffer in ("weight", "bias", "running_mean", "running_var"):
        mlp[f"{prefix}.bn1.{buffer}"] = constant(inner)
    mlp[f"{prefix}.bn1.num_batches_tracked"] = torch.tensor(3)
    return mlp


@pytest.mark.parametrize(("arch", "depth"), [("hvc_r18", 18), ("moco_r50", 50)])
@pytest.mark.parametrize("wrapped", [False, True], ids=["torchvision", "vfs"])
def test_torchvision_and_vfs_files(tmp_path, arch, depth, wrapped):
    # torchvision's resnet18-f37072fd.pth: the bare state dict, fc included. VFS's release: the
    # same keys under `state_dict` beside `meta` (its convert_to_pretrained / publish_model).
    truth = random_state(depth, seed=7, constant_prefixes=("layer4.", "fc.") if depth == 50 else ())
    path = tmp_path / ("r18_nc_sgd_cos_100e_r2_1xNx8_k400-db1a4c0d.pth" if wrapped else f"resnet{depth}-f37072fd.pth")
    torch.save({"state_dict": truth, "meta": {}} if wrapped else truth, path)
    encoder = build_encoder(arch)
    report = load_weights(encoder, path, "torchvision")
    assert_landed(encoder, truth)
    assert_accounted(report, truth)
    assert not report.missing and not report.unexpected
    assert set(report.ignored) == {key for key in truth if key.startswith(("layer4.", "fc."))}
    x = torch.randn(1, 3, 40, 48)
    expected = reference_features(truth, depth, x, stride_one=("layer3", "layer4"))
    assert (features(encoder, x) - expected).abs().max().item() == 0


@pytest.mark.parametrize("wrapping", ["plain", "framework", "fast_net"])
def test_dul_snapshot(tmp_path, wrapping):
    # dense-ulearn-vos Checkpoint.checkpoint: {"model": Framework.state_dict(), "opt", "score",
    # "epoch"}; the Framework holds fast_net (Net: backbone + emb_q, FEATURE_DIM 128). Training
    # may wrap the Framework or its net in DataParallel: infer_vos.py removes `module.` anywhere.
    truth = random_state(18, seed=8)
    prefix = {"plain": "fast_net.", "framework": "module.fast_net.", "fast_net": "fast_net.module."}[wrapping]
    model = OrderedDict((f"{prefix}backbone.{k}", v) for k, v in without(truth, "fc.").items())
    head = {"emb_q.conv1.weight": constant(512, 512, 1, 1), "emb_q.conv1.bias": constant(512),
            "emb_q.conv2.weight": constant(128, 512, 1, 1), "emb_q.conv2.bias": constant(128),
            **{f"emb_q.bn1.{b}": constant(512) for b in ("weight", "bias", "running_mean", "running_var")},
            "emb_q.bn1.num_batches_tracked": torch.tensor(4)}
    model.update((f"{prefix}{k}", v) for k, v in head.items())
    path = tmp_path / "ytvos_e060_res4.pth"
    torch.save({"model": model, "opt": {"state": {}, "param_groups": []}, "score": 0.69, "epoch": 60}, path)
    encoder = build_encoder("dul_r18")
    report = load_weights(encoder, path, "dul")
    assert_landed(encoder, truth)
    assert_accounted(report, model)
    assert not report.missing and not report.unexpected
    assert set(report.ignored) == {f"{prefix}{k}" for k in head}  # res4 keeps layer4: none of it ignored
    x = torch.randn(1, 3, 40, 48)
    expected = reference_features(truth, 18, x, stride_one=("layer3", "layer4"), last="layer4")
    assert (features(encoder, x) - expected).abs().max().item() == 0
    assert encoder.stride == 8 and encoder.out_channels == 512


def test_sfc_fine_grained_checkpoint(tmp_path):
    # SFC train.py save_model: {"model": FineGrained.state_dict(), "optimizer", "epoch", "args"};
    # online / target ResNet-18 encoders (head_type early_return: no fc), MLP2d projectors
    # (512 -> 2048 -> 256) and predictor (256 -> 2048 -> 256).
    truth = random_state(18, seed=9)
    encoder_state = without(truth, "fc.")
    model = OrderedDict((f"online_encoder.{k}", v) for k, v in encoder_state.items())
    model.update((f"target_encoder.{k}", constant(*v.shape)) for k, v in encoder_state.items())
    for name, in_dim in (("online_projector", 512), ("target_projector", 512), ("predictor", 256)):
        model.update(byol_mlp(name, in_dim, 2048, 256))
    path = save_training_checkpoint(tmp_path / "pretrained_fc.pth", model, 19)
    encoder = build_encoder("hvc_r18")
    report = load_weights(encoder, path, "sfc")
    assert_landed(encoder, truth)
    assert_accounted(report, model)
    assert not report.missing and not report.unexpected
    assert report.ignored["predictor.linear1.weight"].startswith("SFC training-only")
    assert {key for key in report.ignored if key.startswith("online_encoder.")} == {
        f"online_encoder.{key}" for key in encoder_state if key.startswith("layer4.")}
    x = torch.randn(1, 3, 40, 48)
    expected = reference_features(truth, 18, x, stride_one=("layer3", "layer4"))
    assert (features(encoder, x) - expected).abs().max().item() == 0
    # HVC's training checkpoint names its heads otherwise: read as one, SFC's heads are unexpected.
    as_hvc = load_weights(build_encoder("hvc_r18"), path, "hvc")
    assert {key.split(".")[0] for key in as_hvc.unexpected} == {"online_projector", "target_projector", "predictor"}


@pytest.mark.parametrize("full", [False, True], ids=["backbone", "full_checkpoint"])
def test_dino_resnet50(tmp_path, full):
    # DINO's dino_resnet50_pretrain.pth: a torchvision ResNet-50 state dict without fc (fc is an
    # Identity); the full checkpoint's teacher holds it under `backbone.` beside the DINOHead.
    truth = random_state(50, seed=10, constant_prefixes=("layer4.",))
    backbone = without(truth, "fc.")
    if full:
        teacher = OrderedDict((f"backbone.{k}", v) for k, v in backbone.items())
        teacher["head.last_layer.weight_g"] = constant(65536, 1)
        student = OrderedDict((f"module.{k}", constant(*v.shape)) for k, v in teacher.items())
        checkpoint, state = {"student": student, "teacher": teacher, "epoch": 100, "args": training_args()}, teacher
    else:
        checkpoint, state = backbone, backbone
    path = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save(checkpoint, path)
    encoder = build_encoder("moco_r50")
    report = load_weights(encoder, path, "dino")
    assert_landed(encoder, truth)
    assert_accounted(report, state)
    assert not report.missing and not report.unexpected


def released_file(tmp_path, format: str):
    """A small file in `format`'s released layout, for the refusal tests (its name, as released)."""
    truth = without(random_state(18, seed=11), "fc.")
    if format == "torchvision":
        return "resnet18-f37072fd.pth", truth
    if format == "dul":
        return "ytvos_e060_res4.pth", {"model": {f"fast_net.backbone.{k}": v for k, v in truth.items()}, "epoch": 60}
    return "pretrained_fc.pth", {"model": {f"online_encoder.{k}": v for k, v in truth.items()}, "epoch": 19}


@pytest.mark.parametrize("format", ["torchvision", "dul", "sfc"])
def test_wrong_and_truncated_released_files_are_refused_naming_the_file(tmp_path, format):
    name, checkpoint = released_file(tmp_path, format)
    path = tmp_path / name
    torch.save(checkpoint, path)
    assert load_weights(build_encoder("hvc_r18"), path, format).complete
    truncated = tmp_path / f"cut-{name}"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VcorrError, match=rf"cut-{re.escape(name)}: not a readable PyTorch checkpoint"):
        load_weights(build_encoder("hvc_r18"), truncated, format)
    # The file given as another format, or to an encoder of another shape: refused, named.
    other = {"torchvision": "dul", "dul": "sfc", "sfc": "dul"}[format]
    with pytest.raises(VcorrError, match=rf"{re.escape(name)}: (no 'model' entry|\d+ weights of hvc_r18 are not in this)"):
        load_weights(build_encoder("hvc_r18"), path, other)
    with pytest.raises(VcorrError, match=rf"{re.escape(name)}: key '.*' has shape .* but moco_r50's"):
        load_weights(build_encoder("moco_r50"), path, format)
