"""Spa-then-Temp stage two (`vcorr.train.stt`, `vcorr.train.correlation`): the loss terms against the
original's own outputs and against brute-force implementations of their definitions, the windowed
correlation against the dense masked one, the backbone's names and shapes, data and a short run."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from train_fixtures import REPO_ROOT, one_thread, run_torchrun, train_command  # noqa: F401 (autouse)
from vcorr.data.index import INDEX_COLUMNS
from vcorr.errors import VcorrError
from vcorr.models import build_encoder
from vcorr.models.weights import load_weights
from vcorr.models.encoders import EncoderSpec, ResNetEncoder
from vcorr.train import correlation, stt
from vcorr.train.checkpoint import checkpoint_path, load_checkpoint
from vcorr.train import load_config

FIXTURES = REPO_ROOT.parent / "shared" / "testdata" / "train"



# ---------------------------------------------------------------------------------------------
# Brute force: explicit loops over positions and window offsets, dense softmax, float64.

def positions(height: int, width: int):
    return [(y, x) for y in range(height) for x in range(width)]


def brute_local_affinity(tar: torch.Tensor, ref: torch.Tensor, radius: int) -> torch.Tensor:
    """Dense `[hw, hw]` A[i, j] = softmax over the in-image window of <t(i), r(j)> / sqrt(C)."""
    channels, height, width = tar.shape
    out = torch.zeros(height * width, height * width, dtype=tar.dtype)
    for i, (y, x) in enumerate(positions(height, width)):
        js, logits = [], []
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                ry, rx = y + dy, x + dx
                if 0 <= ry < height and 0 <= rx < width:
                    js.append(ry * width + rx)
                    logits.append(float(torch.dot(tar[:, y, x], ref[:, ry, rx])) / math.sqrt(channels))
        top = max(logits)
        weights = [math.exp(value - top) for value in logits]
        total = sum(weights)
        for j, weight in zip(js, weights):
            out[i, j] = weight / total
    return out


def brute_pool(fine: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Abar[i', j'] = mean over the 2x2 target block of i' and the 2x2 reference block of j'."""
    coarse_h, coarse_w = height // 2, width // 2
    out = torch.zeros(coarse_h * coarse_w, coarse_h * coarse_w, dtype=fine.dtype)
    for i, (y, x) in enumerate(positions(coarse_h, coarse_w)):
        for j, (v, u) in enumerate(positions(coarse_h, coarse_w)):
            total = 0.0
            for ay in (0, 1):
                for ax in (0, 1):
                    for by in (0, 1):
                        for bx in (0, 1):
                            total += float(fine[(2 * y + ay) * width + 2 * x + ax, (2 * v + by) * width + 2 * u + bx])
            out[i, j] = total / 16
    return out


def brute_entropy(tar: torch.Tensor, ref: torch.Tensor, radius: int) -> torch.Tensor:
    """E(i) = sum_d -log(p_d + 1e-12), p = softmax over all (2R+1)^2 displacements of the raw
    correlation sum_c t(i) r(i + d), 0 outside the image."""
    _, height, width = tar.shape
    out = torch.zeros(height, width, dtype=tar.dtype)
    for y, x in positions(height, width):
        raw = []
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                ry, rx = y + dy, x + dx
                inside = 0 <= ry < height and 0 <= rx < width
                raw.append(float(torch.dot(tar[:, y, x], ref[:, ry, rx])) if inside else 0.0)
        top = max(raw)
        total = sum(math.exp(value - top) for value in raw)
        out[y, x] = sum(-math.log(math.exp(value - top) / total + 1e-12) for value in raw)
    return out


def brute_selection(entropy: torch.Tensor, ratio: float, mode: str) -> torch.Tensor:
    height, width = entropy.shape
    out = torch.zeros(height, width, dtype=entropy.dtype)
    if mode == "original":
        row = int(width * ratio) - 1
        ranked_row = sorted(entropy[row].tolist(), reverse=True)
        for y, x in positions(height, width):
            out[y, x] = float(entropy[y, x] > ranked_row[x])
    else:
        ranked = sorted(entropy.flatten().tolist(), reverse=True)
        threshold = ranked[int(height * width * ratio) - 1]
        for y, x in positions(height, width):
            out[y, x] = float(entropy[y, x] > threshold)
    return out


def smooth_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    values = [abs(p - q) for p, q in zip(a.flatten().tolist(), b.flatten().tolist())]
    return sum(0.5 * d * d if d < 1 else d - 0.5 for d in values) / len(values)


def brute_losses(inputs: dict, cfg: stt.Config) -> dict[str, float]:
    tar, ref = inputs["tar"], inputs["ref"]
    lab_ref, lab_tar, ch = inputs["lab_ref"], inputs["lab_tar"], inputs["dropped"]
    batch = tar[0].shape[0]
    totals = {name: 0.0 for name in stt.LOSS_NAMES}
    for b in range(batch):
        affinities = []
        for level, weight in enumerate((cfg.weight_stage0, cfg.weight_stage1)):
            _, height, width = tar[level][b].shape
            affinity = brute_local_affinity(tar[level][b], ref[level][b], cfg.radius[level])
            stride = lab_ref.shape[-1] // width
            values = lab_ref[b, ch, ::stride, ::stride].flatten()
            recon = torch.zeros(height * width, dtype=values.dtype)
            for i in range(height * width):
                recon[i] = sum(float(affinity[i, j]) * float(values[j]) for j in range(height * width))
            up = F.interpolate(recon.reshape(1, 1, height, width), size=lab_tar.shape[-2:], mode="bilinear",
                               align_corners=False)
            scale = cfg.reconstruction_weight
            # smooth L1 means over the whole batch: accumulate the per-clip means / batch
            totals[f"stage{level}_l1_loss"] += weight * smooth_l1(up * scale, lab_tar[b, ch] * scale) / batch
            affinities.append(affinity)
        h0, w0 = tar[0].shape[-2:]
        pooled = brute_pool(affinities[0], h0, w0)
        selected = brute_selection(brute_entropy(tar[1][b], ref[1][b], cfg.radius[1]), cfg.selection_ratio,
                                   cfg.selection).flatten()
        squared = ((affinities[1] - pooled) ** 2).sum(1)
        totals.setdefault("_local_num", 0.0)
        totals.setdefault("_local_den", 0.0)
        totals["_local_num"] += float((selected * squared).sum())
        totals["_local_den"] += float(selected.sum()) * affinities[1].shape[1]
        s = (tar[2][b].flatten(1).T @ ref[2][b].flatten(1)) / math.sqrt(tar[2].shape[1])
        t = (inputs["teacher_tar"][b].flatten(1).T @ inputs["teacher_ref"][b].flatten(1)) / cfg.teacher_temperature
        totals["global_corrdis_loss"] += cfg.weight_global * float(((s.softmax(1) - t.softmax(1)) ** 2).mean()) / batch
    totals["local_corrdis_loss"] = cfg.weight_local * totals.pop("_local_num") / (totals.pop("_local_den") + 1e-12)
    return totals


def random_inputs(seed: int, dropped: int = 1, size: int = 32, batch: int = 2) -> dict:
    """A small clip at strides 4 / 8 / 16 with the target displaced, in float64."""
    g = torch.Generator().manual_seed(seed)

    def pair(channels: int, side: int, shift: int):
        ref = torch.randn(batch, channels, side, side, generator=g, dtype=torch.float64)
        tar = torch.roll(ref, shifts=(shift, -shift), dims=(2, 3)) + 0.5 * torch.randn(
            batch, channels, side, side, generator=g, dtype=torch.float64)
        return tar, ref

    levels = [pair(4, size // 4, 2), pair(6, size // 8, 1), pair(5, size // 16, 0)]
    teacher_tar, teacher_ref = pair(3, size // 16, 0)
    lab = torch.randn(batch, 2, 3, size, size, generator=g, dtype=torch.float64)
    return {"tar": [t for t, _ in levels], "ref": [r for _, r in levels], "teacher_tar": teacher_tar,
            "teacher_ref": teacher_ref, "lab_ref": lab[:, 0], "lab_tar": lab[:, 1], "dropped": dropped}


# Windows of R = 4 / 2 on 8x8 / 4x4 maps: most windows reach outside the image.
SMALL = dict(radius=(4, 2))


@pytest.mark.parametrize("selection", stt.SELECTIONS)
@pytest.mark.parametrize("dropped", [1, 2])
def test_loss_terms_equal_brute_force(selection, dropped):
    cfg = stt.Config(selection=selection, **SMALL)
    inputs = random_inputs(3 + dropped, dropped)
    ours = stt.loss_terms(**inputs, config=cfg)
    expected = brute_losses(inputs, cfg)
    assert set(ours) == set(stt.LOSS_NAMES)
    for name in stt.LOSS_NAMES:
        assert float(ours[name]) == pytest.approx(expected[name], rel=1e-5, abs=1e-9), name


def test_selection_modes_differ_and_match_brute_force():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(1, 6, 6, 9, generator=g, dtype=torch.float64) * 3
    # brute force entropy of these raw values
    entropy = (-torch.log(raw.softmax(-1) + 1e-12)).sum(-1)[0]
    maps = {}
    for mode in stt.SELECTIONS:
        maps[mode] = stt.selection_map(raw, 0.7, mode)[0]
        assert torch.equal(maps[mode], brute_selection(entropy, 0.7, mode))
    assert not torch.equal(maps["original"], maps["flattened"])
    # flattened keeps int(36 * 0.7) - 1 = 24 positions: the top ones
    assert int(maps["flattened"].sum()) == 24


def test_pooled_target_rows_sum_to_a_quarter_and_match_brute_force():
    inputs = random_inputs(11)
    fine, _ = stt.local_affinity(inputs["tar"][0], inputs["ref"][0], 4)
    pooled = stt.pooled_affinity(fine, 4, 2)
    assert torch.allclose(pooled.sum(-1), torch.full(pooled.shape[:-1], 0.25, dtype=pooled.dtype))
    dense_fine = brute_local_affinity(inputs["tar"][0][0], inputs["ref"][0][0], 4)
    expected = brute_pool(dense_fine, 8, 8)
    assert torch.allclose(to_dense(pooled[0], 2), expected, atol=1e-12)
    # the pooled target fills the coarse window: at (1, 1) every in-image offset of +-2 is reached
    assert (to_dense(pooled[0], 2)[5] > 0).sum() == 16


def to_dense(window: torch.Tensor, radius: int) -> torch.Tensor:
    """`[h, w, K]` window layout -> dense `[hw, hw]` (entries outside the image must be 0)."""
    height, width, _ = window.shape
    dense = torch.zeros(height * width, height * width, dtype=window.dtype)
    dy, dx = correlation.window_offsets(radius)
    valid = correlation.window_valid(height, width, radius)
    assert (window[~valid] == 0).all()
    for y, x in positions(height, width):
        for k in range(window.shape[-1]):
            if valid[y, x, k]:
                dense[y * width + x, (y + dy[k]) * width + x + dx[k]] = window[y, x, k]
    return dense


def test_local_affinity_equals_brute_force_at_borders():
    inputs = random_inputs(5)
    ours, _ = stt.local_affinity(inputs["tar"][0], inputs["ref"][0], 4)
    expected = brute_local_affinity(inputs["tar"][0][1], inputs["ref"][0][1], 4)
    assert torch.allclose(to_dense(ours[1], 4), expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The windowed correlation against the dense masked one.

def dense_window_correlation(tar, ref, radius):
    """Dense [B, hw, hw] correlation gathered into the window layout, 0 outside the image."""
    batch, _, height, width = tar.shape
    dense = torch.einsum("bci,bcj->bij", tar.flatten(2), ref.flatten(2))
    dy, dx = correlation.window_offsets(radius)
    ys = torch.arange(height).view(-1, 1, 1) + dy
    xs = torch.arange(width).view(1, -1, 1) + dx
    valid = correlation.window_valid(height, width, radius)
    columns = (ys.clamp(0, height - 1) * width + xs.clamp(0, width - 1)).reshape(1, height * width, -1)
    picked = torch.take_along_dim(dense, columns, dim=2).reshape(batch, height, width, -1)
    return picked * valid


@pytest.mark.parametrize("shape,radius", [
    ((2, 5, 7, 9), 3),     # windows wider than half the image
    ((3, 3, 21, 18), 4),
    ((2, 4, 33, 40), 12),  # level-0 radius
    ((1, 2, 5, 4), 6),     # windows larger than the image
])
def test_window_correlation_equals_dense_forward_and_backward(shape, radius):
    g = torch.Generator().manual_seed(sum(shape))
    tar = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    ours = correlation.window_correlation(tar, ref, radius)
    expected = dense_window_correlation(tar, ref, radius)
    assert torch.allclose(ours, expected, atol=1e-12)
    upstream = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((ours * upstream).sum(), (tar, ref))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (tar, ref))
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, atol=1e-12)


def test_window_apply_equals_dense_forward_and_backward():
    g = torch.Generator().manual_seed(1)
    weights = torch.rand(2, 6, 7, 25, generator=g, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    ours = correlation.window_apply(weights, values, 2)
    dy, dx = correlation.window_offsets(2)
    expected = torch.zeros_like(ours)
    for y, x in positions(6, 7):
        for k in range(25):
            v, u = y + int(dy[k]), x + int(dx[k])
            if 0 <= v < 6 and 0 <= u < 7:
                expected[:, :, y, x] += weights[:, y, x, k, None] * values[:, :, v, u]
    assert torch.allclose(ours, expected, atol=1e-12)
    upstream = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((ours * upstream).sum(), (weights, values))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (weights, values))
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Spa-then-Temp's own outputs.

@pytest.mark.parametrize("case", ["a", "b"])
def test_loss_terms_and_gradients_equal_spa_then_temp(case):
    path = FIXTURES / f"stt-loss-{case}.pt"
    if not path.is_file():
        pytest.skip(f"{path} absent (shared test data not available)")
    fixture = torch.load(path, weights_only=False)
    inputs = fixture["inputs"]
    tar = [t.clone().requires_grad_() for t in inputs["tar"]]
    ref = [t.clone().requires_grad_() for t in inputs["ref"]]
    config = fixture["config"]
    assert tuple(config["radius"]) == stt.Config().radius and config["T"] == stt.Config().selection_ratio
    terms = stt.loss_terms(tar=tar, ref=ref, teacher_tar=inputs["teacher_tar"], teacher_ref=inputs["teacher_ref"],
                           lab_ref=inputs["lab_ref"], lab_tar=inputs["lab_tar"], dropped=inputs["dropped"])
    for name in stt.LOSS_NAMES:
        assert terms[name].item() == pytest.approx(fixture["losses"][name], rel=1e-4), name
    sum(terms.values()).backward()
    for ours, theirs in zip(tar + ref, fixture["grad_tar"] + fixture["grad_ref"]):
        assert (ours.grad - theirs).abs().max() <= 1e-3 * theirs.abs().max()


def test_loss_terms_refuse_bad_pyramids():
    inputs = random_inputs(0)
    with pytest.raises(VcorrError, match="twice level 1"):
        stt.loss_terms(**{**inputs, "tar": [inputs["tar"][1]] * 2 + [inputs["tar"][2]],
                          "ref": [inputs["ref"][1]] * 2 + [inputs["ref"][2]]}, config=stt.Config(**SMALL))
    with pytest.raises(VcorrError, match="1 or 2"):
        stt.loss_terms(**{**inputs, "dropped": 0}, config=stt.Config(**SMALL))


# ---------------------------------------------------------------------------------------------
# Backbone, model, export.

def test_backbone_names_and_shapes():
    student = stt.ResNet(18, (1, 2, 2, 4), "none", (1, 2, 3))
    keys = set(student.state_dict())
    for key in ("conv1.conv.weight", "conv1.bn.running_var", "layer1.0.conv2.bn.weight",
                "layer2.0.downsample.conv.weight", "layer2.0.downsample.bn.bias", "layer4.1.conv2.conv.weight"):
        assert key in keys
    assert "layer1.0.downsample.conv.weight" not in keys  # R18 layer1 keeps 64 channels
    outs = student(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 16, 16), (1, 256, 8, 8), (1, 512, 2, 2)]
    teacher = stt.ResNet(50, (1, 2, 2, 2), "max", (3,))
    assert "layer1.0.downsample.bn.weight" in teacher.state_dict() and "layer3.5.conv3.bn.weight" in teacher.state_dict()
    (out,) = teacher(torch.randn(1, 3, 64, 64))
    assert tuple(out.shape) == (1, 2048, 2, 2)
    mean_pool = stt.ResNet(18, (1, 1, 1, 1), "mean", (2,))
    assert tuple(mean_pool(torch.randn(1, 3, 32, 32))[0].shape) == (1, 256, 8, 8)


def tiny_config(**overrides) -> stt.Config:
    settings = dict(depth=18, teacher_depth=18, image_size=64, batch_size=2, epochs=1, warmup_epochs=0)
    settings.update(overrides)
    return stt.Config(**settings)


@pytest.mark.parametrize("arch", ["stt_r18_s8", "stt_r18_s4"])
def test_export_loads_as_stt_weights_with_the_same_features(arch):
    torch.manual_seed(0)
    model = stt.build_model(tiny_config(), total_steps=1)
    for module in model.backbone.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    exported = stt.export(model, model.cfg, {"epoch": 1})
    assert set(exported) == {"meta", "state_dict"} and all(k.startswith("backbone.") for k in exported["state_dict"])
    encoder = build_encoder(arch)
    report = load_weights(encoder, exported, "stt")
    assert report.complete and not report.unexpected
    encoder.eval()
    model.eval()
    image = torch.randn(1, 3, 64, 64)
    if arch.endswith("s8"):  # same strides up to layer3: the student's level-1 features
        expected = model.backbone(image)[1]
    else:
        expected = stt.ResNet(18, (1, 1, 1, 1), "mean", (2,))
        expected.load_state_dict(model.backbone.state_dict())
        expected = expected.eval()(image)[0]
    assert torch.allclose(encoder(image), expected, atol=1e-5)


def test_teacher_loads_moco_layout_and_matches_torchvision(tmp_path):
    torch.manual_seed(1)
    spec = EncoderSpec("teacher", 18, (1, 2, 2, 2), "max", "layer4")
    from torchvision.models import resnet18
    network = resnet18(weights=None)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.bias.data.uniform_(-0.5, 0.5)
    state = {f"module.encoder_q.{k}": v for k, v in network.state_dict().items()}
    state["module.encoder_q.fc.weight"] = torch.randn(128, 512)
    path = tmp_path / "moco.pth.tar"
    torch.save({"state_dict": state, "arch": "resnet18", "epoch": 200}, path)
    model = stt.build_model(tiny_config(teacher_weights=str(path)), total_steps=1)
    reference = ResNetEncoder(spec, network).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.backbone_t(image)[0], reference(image), atol=1e-5)
    assert not any(p.requires_grad for p in model.backbone_t.parameters())
    optimizer, _ = stt.build_optimizer(model.cfg, model, steps_per_epoch=3)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.backbone.parameters()}
    model.train()
    assert model.backbone.training and not model.backbone_t.training


def test_channel_dropout_input_and_generator_state():
    model = stt.build_model(tiny_config(), total_steps=1)
    seen = []
    model.backbone.conv1.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    lab = torch.randn(2, 2, 3, 64, 64)
    rgb = torch.randn(2, 2, 3, 64, 64)
    state = model.train_state()
    draws = [model.draw_dropped_channel() for _ in range(12)]
    assert set(draws) == {1, 2}
    model.load_train_state(state)
    assert [model.draw_dropped_channel() for _ in range(12)] == draws
    model.load_train_state(state)
    model(rgb, lab)
    dropped = draws[0]
    student_input = seen[0].reshape(2, 2, 3, 64, 64)
    assert (student_input[:, :, dropped] == 0).all()
    kept = [c for c in range(3) if c != dropped]
    assert torch.allclose(student_input[:, :, kept], lab[:, :, kept] * 1.5)


def test_lr_schedule_is_mmcv_cosine_with_linear_warmup():
    cfg = stt.Config(epochs=10, warmup_epochs=2)
    steps = 5
    model = torch.nn.Linear(1, 1)
    model.backbone = torch.nn.Linear(1, 1)
    optimizer, scheduler = stt.build_optimizer(cfg, model, steps)
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step, lr in enumerate(lrs):
        cosine = 5e-5 * 0.001 + 0.5 * (5e-5 - 5e-5 * 0.001) * (1 + math.cos(math.pi * step / 50))
        if step < 10:
            cosine *= 1 - (1 - step / 10) * (1 - 0.001)
        assert lr == pytest.approx(cosine, rel=1e-9)
    assert lrs[0] == pytest.approx(5e-5 * 1e-3, rel=1e-2)


def test_configs_are_the_published_recipe():
    for name, depth in (("stt_r18", 18), ("stt_r50", 50)):
        cfg = load_config("stt", REPO_ROOT / "config" / "train" / f"{name}.yaml")
        assert cfg == stt.Config(depth=depth)
    cfg = stt.Config()
    assert (cfg.batch_size, cfg.lr, cfg.betas, cfg.epochs, cfg.sync_bn, cfg.image_size) == (64, 5e-5, (0.9, 0.999), 800, True, 256)
    with pytest.raises(VcorrError, match="selection"):
        stt.Config(selection="top")


# ---------------------------------------------------------------------------------------------
# Data.

def test_clip_crop_box():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        left, top, right, bottom = stt.clip_crop_box(320, 180, g, (0.6, 1.0), (1.5, 2.0), 20)
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 320 and 0 <= top and bottom <= 180
        if (w, h) != (180, 180):
            assert 0.6 * 320 * 180 * 0.97 <= w * h <= 320 * 180
            assert 1.45 <= w / h <= 2.05
    # nothing fits a tall image at w/h >= 1.5: the centred square of the short side
    assert stt.clip_crop_box(10, 100, g, (0.6, 1.0), (1.5, 2.0), 20) == (0, 45, 10, 55)


def write_video(folder: Path, name: str, frames: int, width: int = 96, height: int = 64) -> list[list]:
    """Frames with one spatial pattern and a per-frame brightness (frame k adds 20 k)."""
    (folder / name).mkdir(parents=True)
    ys, xs = np.mgrid[0:height, 0:width]
    pattern = np.stack([xs * 2 % 120, ys * 3 % 120, (xs + ys) % 60], -1).astype(np.uint8)
    rows = []
    for k in range(frames):
        path = folder / name / f"{5 * k:05d}.png"
        Image.fromarray(pattern + np.uint8(20 * k)).save(path)
        rows.append(["train", name, f"{5 * k:05d}", str(path), "", height, width, pd.NA])
    return rows


def test_clip_pairs_dataset(tmp_path):
    rows = write_video(tmp_path, "video_a", 5) + write_video(tmp_path, "video_b", 2) + write_video(tmp_path, "single", 1)
    index = pd.DataFrame(rows, columns=["split", "sequence", "frame", "image", "annotation", "height", "width", "objects"])
    cfg = tiny_config(image_size=32)
    dataset = stt.build_dataset(cfg, index, epoch_seed=0)
    assert len(dataset) == 2  # the one-frame video gives no pair
    offsets = set()
    for epoch in range(6):
        data = stt.build_dataset(cfg, index, epoch_seed=epoch)
        rgb, lab = data[0]
        assert rgb.shape == lab.shape == (2, 3, 32, 32)
        again = data[0]
        assert torch.equal(again[0], rgb) and torch.equal(again[1], lab)
        # same crop and flip: the frames differ by the brightness step of one frame (20 / 255)
        difference = (rgb[1] - rgb[0]) * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
        assert torch.allclose(difference, torch.full_like(difference, 20), atol=1.5)
        offsets.add(round(float(rgb[0, 2].mean() * 0.225 + 0.406) * 255))
    assert len(offsets) > 1  # the start frame varies with the epoch
    assert not torch.equal(stt.build_dataset(cfg, index, epoch_seed=0)[0][0],
                           stt.build_dataset(tiny_config(image_size=32, seed=5), index, epoch_seed=0)[0][0])


# ---------------------------------------------------------------------------------------------
# A short run.

@pytest.mark.slow
def test_short_training_run_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    rows = write_video(tmp_path, "video_a", 3) + write_video(tmp_path, "video_b", 3, width=80)
    index = pd.DataFrame(rows, columns=["split", "sequence", "frame", "image", "annotation", "height", "width", "objects"])
    steps = 24
    cfg = tiny_config(lr=1e-3, epochs=steps, image_size=32)  # feature maps 8x8, 4x4, 1x1
    model = stt.build_model(cfg, total_steps=steps)
    optimizer, scheduler = stt.build_optimizer(cfg, model, steps_per_epoch=1)
    data = stt.build_dataset(cfg, index, epoch_seed=0)
    batch = tuple(torch.stack(items) for items in zip(*(data[i] for i in range(len(data)))))
    model.train()
    losses = []
    for _ in range(steps):
        loss, terms = stt.training_step(model, batch)
        assert set(terms) == set(stt.LOSS_NAMES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.slow
def test_vcorr_train_stt_end_to_end(tmp_path):
    """`vcorr train --method stt` with the published R18 config on tiny clips: the loop runs the
    module, logs the four terms and exports a file vcorr's `stt` weight format evaluates."""
    rows = []
    for number in range(3):
        rows += write_video(tmp_path / "frames", f"video_{number}", 3)
    index = tmp_path / "index.csv"
    pd.DataFrame(rows, columns=["split", "sequence", "frame", "image", "annotation", "height", "width",
                                "objects"]).to_csv(index, index=False)
    out = tmp_path / "stt_r18.pth"
    sets = ["image_size=32", "batch_size=2", "workers=0", "epochs=2", "teacher_depth=18", "log_every=1"]
    command = [sys.executable, "-m", "vcorr", "train", "--method", "stt", "--config",
               str(REPO_ROOT / "config" / "train" / "stt_r18.yaml"), "--data", str(index), "--workdir",
               str(tmp_path / "work"), "--out", str(out), "--device", "cpu",
               *[item for value in sets for item in ("--set", value)]]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = pd.read_csv(tmp_path / "work" / "metrics.csv")
    # drop_last (Spa-then-Temp's loader): 3 clips give one whole batch of 2 per epoch.
    assert list(metrics.step) == [1, 2] and list(metrics.epoch) == [0, 1]
    assert set(stt.LOSS_NAMES) <= set(metrics.columns)
    exported = torch.load(out, weights_only=False)
    assert set(exported) == {"meta", "state_dict"}
    report = load_weights(build_encoder("stt_r18_s8"), out, "stt")
    assert report.complete and not report.unexpected


@pytest.mark.slow
def test_torchrun_on_cpu_with_the_published_sync_bn_config(tmp_path):
    """`sync_bn: true` (the published config) under torchrun on CPU: SyncBatchNorm is CUDA-only,
    so the conversion is skipped with one warning and the two processes train."""
    rows = []
    for number in range(5):
        rows += write_video(tmp_path / "frames", f"video_{number}", 2)
    index = tmp_path / "index.csv"
    pd.DataFrame(rows, columns=INDEX_COLUMNS).to_csv(index, index=False)
    workdir = tmp_path / "work"
    command = train_command(index, workdir, tmp_path / "stt.pth", "batch_size=4", "epochs=2", "teacher_depth=18",
                            config=REPO_ROOT / "config" / "train" / "stt_r18.yaml", method="stt")
    result = run_torchrun(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("warning: sync_bn: SyncBatchNorm needs CUDA") == 1
    # 5 clips over 2 ranks: 3 per rank (padded), one whole batch of 2 each (drop_last).
    assert list(pd.read_csv(workdir / "metrics.csv").step) == [1, 2]
    state = load_checkpoint(checkpoint_path(workdir))
    assert state["world_size"] == 2 and state["steps_per_epoch"] == 1 and state["config"]["sync_bn"] is True

