"""HVC training: the sparse hybrid loss against HVC's own outputs and a dense brute force, the EMA
target (schedule, order, parameters only), the checkpoint key layout, and a short CPU run."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vcorr.data.index import INDEX_COLUMNS
from vcorr.errors import VcorrError
from vcorr.models.weights import load_weights
from vcorr.models.encoders import build_encoder
from vcorr.train import hvc
from vcorr.train import load_config
from vcorr.train.hvc import HVC, Config, FlowHead, hybrid_loss, momentum_at, positive_pairs
from train_fixtures import one_thread  # noqa: F401 (autouse: one intra-op thread)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}



# ------------------------------------------------------------------------------------------------
# A dense brute force of the loss's definition (never in the library)


def dense_mask(coord_q, coord_k, height, width, radius):
    """`[N, HW, HW]` positives straight from the definition: cell centres from the boxes,
    distance over the larger cell diagonal, below `radius`."""
    cols = torch.arange(width, dtype=coord_q.dtype)
    rows = torch.arange(height, dtype=coord_q.dtype)

    def centres(box):
        bw = ((box[:, 2] - box[:, 0]) / width)[:, None, None]
        bh = ((box[:, 3] - box[:, 1]) / height)[:, None, None]
        x = ((cols[None, None, :] + 0.5) * bw + box[:, 0, None, None]).expand(-1, height, width)
        y = ((rows[None, :, None] + 0.5) * bh + box[:, 1, None, None]).expand(-1, height, width)
        return x.reshape(len(box), -1), y.reshape(len(box), -1), torch.sqrt(bw ** 2 + bh ** 2).view(-1, 1, 1)

    xq, yq, dq = centres(coord_q)
    xk, yk, dk = centres(coord_k)
    dist = torch.sqrt((xq[:, :, None] - xk[:, None, :]) ** 2 + (yq[:, :, None] - yk[:, None, :]) ** 2) / torch.max(dq, dk)
    return dist < radius


def dense_terms(q, k, coord_q, coord_k, flow, radius):
    """(spatial, flow) means of the definition, with every [N, HW, HW] product formed (float64)."""
    N, C, H, W = q.shape
    mask = dense_mask(coord_q, coord_k, H, W, radius).double()
    f = F.normalize(flow(q, k), dim=1).double().flatten(2)
    g = F.normalize(flow(k, q), dim=1).double().flatten(2)
    logits = q.double().flatten(2).transpose(1, 2) @ k.double().flatten(2)
    flow_logits = f.transpose(1, 2) @ g
    count = mask.sum((1, 2)) + 1e-6
    return ((logits * mask).sum((1, 2)) / count).mean(), ((flow_logits * mask).sum((1, 2)) / count).mean()


def pair_set(pairs):
    return set(zip(*(t.tolist() for t in pairs)))


def random_features(generator, n, c, h, w):
    q = F.normalize(torch.randn(n, c, h, w, generator=generator), dim=1)
    k = F.normalize(torch.randn(n, c, h, w, generator=generator), dim=1)
    return q, k


BOX_CASES = {
    # sample 0 identical crops, 1 partial overlap, 2 a tiny crop inside a large one, 3 disjoint
    "mixed": (
        [[0.10, 0.20, 0.70, 0.90], [0.00, 0.00, 0.60, 0.55], [0.05, 0.00, 1.00, 1.00], [0.00, 0.00, 0.30, 0.30]],
        [[0.10, 0.20, 0.70, 0.90], [0.35, 0.30, 0.95, 0.85], [0.40, 0.45, 0.47, 0.51], [0.60, 0.65, 0.95, 1.00]],
    ),
    # a one-pixel-wide crop (x2 == x1: every key column at one x) and two point crops (no diagonal)
    "degenerate": (
        [[0.20, 0.10, 0.80, 0.70], [0.30, 0.30, 0.30, 0.30], [0.00, 0.00, 1.00, 1.00]],
        [[0.45, 0.15, 0.45, 0.65], [0.30, 0.30, 0.30, 0.30], [0.50, 0.50, 0.50, 0.50]],
    ),
}


@pytest.mark.parametrize("case", sorted(BOX_CASES))
@pytest.mark.parametrize("radius", [0.1, 0.7, 3.0])
def test_positive_pairs_equal_the_dense_mask(case, radius):
    coord_q, coord_k = (torch.tensor(boxes) for boxes in BOX_CASES[case])
    for height, width in [(8, 8), (5, 7)]:
        pairs = positive_pairs(coord_q, coord_k, height, width, radius)
        expected = dense_mask(coord_q, coord_k, height, width, radius).nonzero()
        assert pair_set(pairs) == set(map(tuple, expected.tolist()))
        assert len(pairs[0]) == len(expected)  # no pair twice


def test_positive_pairs_on_random_boxes_of_very_different_sizes():
    generator = torch.Generator().manual_seed(3)
    n = 64
    size = torch.exp(torch.empty(n, 2).uniform_(math.log(0.01), 0.0, generator=generator))
    corner = torch.rand(n, 2, generator=generator) * (1 - size)
    coord_q = torch.cat((corner, corner + size), 1)
    size_k = size * torch.exp(torch.empty(n, 2).uniform_(-3, 3, generator=generator)).clamp(max=1 / size)
    centre = coord_q[:, :2] + size / 2 + 0.3 * size * torch.randn(n, 2, generator=generator)
    coord_k = torch.cat((centre - size_k / 2, centre + size_k / 2), 1)
    for radius in (0.1, 0.5, 2.0):
        pairs = positive_pairs(coord_q, coord_k, 12, 12, radius)
        expected = dense_mask(coord_q, coord_k, 12, 12, radius).nonzero()
        assert pair_set(pairs) == set(map(tuple, expected.tolist()))
    assert len(pairs[0]) > 0 and len(set(pairs[0].tolist())) > n // 2


def test_identical_crops_pair_each_cell_with_itself():
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0], [0.3, 0.1, 0.5, 0.35]])
    n, a, b = positive_pairs(boxes, boxes.clone(), 6, 9, 0.1)
    assert torch.equal(a, b)
    assert sorted(zip(n.tolist(), a.tolist())) == [(s, cell) for s in range(3) for cell in range(54)]


@pytest.mark.parametrize("case", sorted(BOX_CASES))
def test_each_loss_term_equals_its_dense_definition(case):
    generator = torch.Generator().manual_seed(11)
    coord_q, coord_k = (torch.tensor(boxes) for boxes in BOX_CASES[case])
    torch.manual_seed(0)
    flow = FlowHead(2 * 16, 32, 2)
    for radius in (0.1, 0.7):
        q, k = random_features(generator, len(coord_q), 16, 6, 7)
        q.requires_grad_(True)
        loss, terms = hybrid_loss(q, k, coord_q, coord_k, flow, radius)
        spatial, temporal = dense_terms(q, k, coord_q, coord_k, flow, radius)
        torch.testing.assert_close(terms["spatial"].double(), spatial.detach(), **TOLERANCE)
        torch.testing.assert_close(terms["flow"].double(), temporal.detach(), **TOLERANCE)
        torch.testing.assert_close(loss.double(), -2 * (spatial + temporal).detach(), **TOLERANCE)
        (grad,) = torch.autograd.grad(loss, q)
        (expected,) = torch.autograd.grad(-2 * (spatial + temporal), q)
        torch.testing.assert_close(grad.double(), expected.double(), **TOLERANCE)
    assert terms["positives"] > 0


def test_disjoint_crops_give_zero_positives_and_zero_loss():
    coord_q = torch.tensor([[0.0, 0.0, 0.3, 0.3], [0.0, 0.0, 0.2, 1.0]])
    coord_k = torch.tensor([[0.6, 0.6, 1.0, 1.0], [0.5, 0.0, 1.0, 1.0]])
    q, k = random_features(torch.Generator().manual_seed(1), 2, 8, 4, 4)
    q.requires_grad_(True)
    flow = FlowHead(16, 8, 2)
    loss, terms = hybrid_loss(q, k, coord_q, coord_k, flow, 0.1)
    assert terms["positives"] == 0
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(q.grad) == 0


@pytest.mark.parametrize("case", ["a", "b"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loss_and_gradients_equal_the_original(shared_testdata, case, dtype):
    """HVC's own hybrid_loss and Flow (run in float32) on the same inputs.

    Evaluated in float64, the only difference left is the fixture's own float32 rounding: below
    1e-5 everywhere except the flow head's conv2 gradient (a sum over every cell of both flow
    calls, magnitude 1.3), where it reaches 2.2e-5; hence 2e-5 of each tensor's scale. In
    float32 the summation order (which depends on the thread count) adds about as much again."""
    fixture = torch.load(shared_testdata / "train" / f"hvc-loss-{case}.pt")
    tolerance = 2e-5 if dtype == torch.float64 else 5e-5
    q = fixture["q"].to(dtype).requires_grad_(True)
    flow = FlowHead(2 * q.shape[1], 256, 2).to(dtype)
    flow.load_state_dict(fixture["flow_state_dict"])
    loss, _ = hybrid_loss(q, fixture["k"].to(dtype), fixture["coord_q"], fixture["coord_k"], flow, fixture["pos_radius"])
    loss.backward()
    assert abs(loss.item() - float(fixture["loss"])) < 1e-6
    gradients = {"q": (q.grad, fixture["grad_q"])}
    gradients.update({name: (p.grad, fixture["grad_flow"][name]) for name, p in flow.named_parameters()})
    for name, (actual, expected) in gradients.items():
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(actual, expected.to(dtype), rtol=1e-5, atol=tolerance * scale, msg=name)


# ------------------------------------------------------------------------------------------------
# The model: EMA, order of operations, state dict


def tiny_batch(seed=0, batch=2, size=32):
    generator = torch.Generator().manual_seed(seed)
    views = torch.randn(2, batch, 3, size, size, generator=generator)
    box1 = torch.tensor([[0.0, 0.0, 0.8, 0.8], [0.1, 0.2, 0.9, 1.0]])[:batch]
    box2 = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.1, 0.2, 0.9, 1.0]])[:batch]
    return views[0], views[1], box1, box2


def test_momentum_schedule():
    assert momentum_at(0, 100) == pytest.approx(0.99, abs=1e-12)
    assert momentum_at(50, 100) == pytest.approx(0.995, abs=1e-12)
    assert momentum_at(100, 100) == pytest.approx(1.0, abs=1e-12)
    torch.manual_seed(0)
    model = HVC(total_steps=2)
    used = []
    for _ in range(3):
        target_before = copy.deepcopy(model.target_encoder.state_dict())
        model(*tiny_batch())
        used.append(model.last_terms["momentum"])
    assert used == pytest.approx([0.99, 0.995, 1.0], abs=1e-12)
    assert model.step == 3 and model.train_state() == {"ema_step": 3}
    # m = 1 leaves the target parameters exactly as they were
    after = model.target_encoder.state_dict()
    assert all(torch.equal(after[key], target_before[key]) for key, _ in model.target_encoder.named_parameters())


def test_ema_moves_parameters_only():
    torch.manual_seed(0)
    model = HVC(total_steps=10)
    pairs = [(model.online_encoder, model.target_encoder), (model.online_space_projector, model.target_space_projector)]
    with torch.no_grad():
        for online, target in pairs:
            for parameter in online.parameters():
                parameter.add_(torch.randn_like(parameter))
            for name, buffer in target.named_buffers():
                buffer.fill_(5)
                online.get_buffer(name).fill_(-5)
    before = [(copy.deepcopy(o.state_dict()), copy.deepcopy(t.state_dict())) for o, t in pairs]
    assert model.momentum_update() == pytest.approx(0.99)
    for (online, target), (online_before, target_before) in zip(pairs, before):
        parameters = {name for name, _ in target.named_parameters()}
        for key, value in target.state_dict().items():
            if key in parameters:
                expected = 0.99 * target_before[key] + 0.01 * online_before[key]
                torch.testing.assert_close(value, expected, rtol=0, atol=1e-6, msg=key)
                assert not torch.equal(value, target_before[key]), key
            else:
                assert torch.equal(value, target_before[key]), key
        assert all(not p.requires_grad for p in target.parameters())


def test_ema_happens_before_the_target_forward():
    """With base momentum 0 the first step's momentum is 0: the target becomes the online
    network, so if the update runs before the target forward the two branches agree exactly."""
    torch.manual_seed(0)
    model = HVC(total_steps=10, momentum=0.0)
    with torch.no_grad():
        for parameter in [*model.target_encoder.parameters(), *model.target_space_projector.parameters()]:
            parameter.mul_(0.5).add_(0.1)
    outputs = {"online": [], "target": []}
    model.online_space_projector.register_forward_hook(lambda m, i, o: outputs["online"].append(o.detach().clone()))
    model.target_space_projector.register_forward_hook(lambda m, i, o: outputs["target"].append(o.detach().clone()))
    model(*tiny_batch())
    assert len(outputs["online"]) == len(outputs["target"]) == 2
    for online, target in zip(outputs["online"], outputs["target"]):
        assert torch.equal(online, target)


def test_forward_is_the_symmetric_loss_of_the_right_branches():
    """loss = l(pred(view1), target(view2), box1, box2) + l(pred(view2), target(view1), box2, box1),
    recomputed by hand with the dense definition, after one EMA step."""
    torch.manual_seed(0)
    model = HVC(total_steps=10)
    with torch.no_grad():
        for parameter in model.target_encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    reference = copy.deepcopy(model)
    view1, view2, box1, box2 = tiny_batch(size=48)
    loss = model(view1, view2, box1, box2)

    reference.momentum_update()
    online = lambda x: F.normalize(reference.space_predictor(reference.online_space_projector(reference.online_encoder(x))), dim=1)
    target = lambda x: F.normalize(reference.target_space_projector(reference.target_encoder(x)), dim=1)
    with torch.no_grad():
        p1, p2, t1, t2 = online(view1), online(view2), target(view1), target(view2)
        s12, f12 = dense_terms(p1, t2, box1, box2, reference.flow, 0.1)
        s21, f21 = dense_terms(p2, t1, box2, box1, reference.flow, 0.1)
    torch.testing.assert_close(loss.double(), -2 * (s12 + f12 + s21 + f21), **TOLERANCE)
    torch.testing.assert_close(model.last_terms["spatial"].double(), s12 + s21, **TOLERANCE)
    # clips [B, T, 3, H, W] are flattened as the original does
    clip_model = copy.deepcopy(reference)
    clip_model.step = 0
    again = copy.deepcopy(clip_model)
    flat = again(view1, view2, box1, box2)
    clips = clip_model(view1[:, None], view2[:, None], box1[:, None], box2[:, None])
    torch.testing.assert_close(clips, flat, rtol=0, atol=0)


def expected_hvc_keys():
    """HVC's `model.state_dict()` layout, written out from its module structure."""
    encoder = list(build_encoder("hvc_r18_train").state_dict())
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    block = ["conv1.weight", "conv1.bias", *[f"bn1.{b}" for b in bn], "conv2.weight", "conv2.bias",
             *[f"bn2.{b}" for b in bn], "conv3.weight", "conv3.bias"]
    flow = ["conv1.weight", "conv1.bias", *[f"bn1.{b}" for b in bn], "conv2.weight", "conv2.bias", *[f"bn2.{b}" for b in bn]]
    return ([f"online_encoder.{k}" for k in encoder] + [f"target_encoder.{k}" for k in encoder]
            + [f"online_space_projector.block.{k}" for k in block] + [f"target_space_projector.block.{k}" for k in block]
            + [f"space_predictor.block.{k}" for k in block] + [f"flow.{k}" for k in flow])


def test_state_dict_is_hvc_layout():
    torch.manual_seed(0)
    state = HVC(total_steps=10).state_dict()
    assert list(state) == expected_hvc_keys()
    shapes = {"online_encoder.layer4.1.conv2.weight": (512, 512, 3, 3),
              "online_space_projector.block.conv1.weight": (256, 512, 1, 1),
              "space_predictor.block.conv1.weight": (256, 256, 1, 1),
              "flow.conv1.weight": (256, 512, 1, 1), "flow.conv2.weight": (2, 256, 1, 1), "flow.bn2.weight": (2,)}
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape
    # the project's reader of HVC training checkpoints takes it as the original's
    report = load_weights(build_encoder("hvc_r18"), {"model": state}, "hvc")
    assert report.complete and not report.unexpected
    assert not any(key.startswith("ema") or "step" in key for key in state)


def test_load_without_targets_copies_the_online_networks():
    torch.manual_seed(0)
    source = HVC(total_steps=10)
    with torch.no_grad():
        for parameter in source.online_encoder.parameters():
            parameter.add_(torch.randn_like(parameter))
    online_only = {key: value for key, value in source.state_dict().items() if not key.startswith("target_")}
    torch.manual_seed(1)
    model = HVC(total_steps=10)
    model.load_state_dict(online_only)
    for online, target in (("online_encoder", "target_encoder"), ("online_space_projector", "target_space_projector")):
        a, b = getattr(model, online).state_dict(), getattr(model, target).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert torch.equal(model.online_encoder.conv1.weight, source.online_encoder.conv1.weight)
    partial = {key: value for key, value in source.state_dict().items() if not key.startswith("target_encoder.")}
    with pytest.raises(RuntimeError, match="target_encoder"):
        model.load_state_dict(partial)
    # a full HVC state dict loads strictly, targets included
    model.load_state_dict(source.state_dict())
    assert torch.equal(model.target_encoder.conv1.weight, source.target_encoder.conv1.weight)


def test_train_state_resumes_the_schedule():
    torch.manual_seed(0)
    model = HVC(total_steps=8)
    model.load_train_state({"ema_step": 4})
    assert model.momentum() == pytest.approx(0.995)
    model(*tiny_batch())
    assert model.last_terms["momentum"] == pytest.approx(0.995) and model.step == 5


# ------------------------------------------------------------------------------------------------
# The method-module contract


def write_index(folder: Path, count: int, sequences: int = 1) -> pd.DataFrame:
    """Smooth random RGB images (so crops have structure) in `vcorr data index` columns."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(5)
    rows = []
    for number in range(count):
        coarse = generator.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((80 + 8 * (number % 3), 60), Image.BICUBIC)
        path = folder / f"{number:05d}.jpg"
        image.save(path, quality=95)
        rows.append(["train", f"seq{number % sequences}", path.stem, str(path), "", 60, image.width, pd.NA])
    return pd.DataFrame(rows, columns=INDEX_COLUMNS)


def test_config_defaults_are_the_originals():
    cfg = Config()
    assert (cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.epochs, cfg.seed, cfg.image_size) == (128, 1e-3, 0.0, 20, 42, 256)
    assert cfg.crop_scale == (0.0, 1.0) and cfg.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert (cfg.normalisation, cfg.shuffle, cfg.amp, cfg.pos_radius, cfg.momentum) == ("cifar10", False, "off", 0.1, 0.99)
    video = Config(variant="video")
    assert (video.shuffle, video.amp, video.frames_per_video) == (True, "fp16", 80)
    assert Config(variant="video", amp="off", shuffle=False).amp == "off"
    loaded = load_config("hvc", REPO_ROOT / "config" / "train" / "hvc.yaml")
    assert loaded == cfg
    with pytest.raises(VcorrError, match="normalisation"):
        Config(normalisation="imagenet1k")
    with pytest.raises(VcorrError, match="variant"):
        Config(variant="clips")


def test_dataset_views_boxes_and_video_variant(tmp_path):
    index = write_index(tmp_path / "images", 6, sequences=2)
    cfg = Config(image_size=32)
    dataset = hvc.build_dataset(cfg, index, epoch_seed=0)
    view1, view2, box1, box2 = dataset[0]
    assert view1.shape == view2.shape == (3, 32, 32) and box1.shape == box2.shape == (4,)
    assert not torch.equal(box1, box2)
    imagenet = hvc.build_dataset(Config(image_size=32, normalisation="imagenet"), index, epoch_seed=0)[0]
    cifar_mean, cifar_std = hvc.NORMALISATIONS["cifar10"]
    net_mean, net_std = hvc.NORMALISATIONS["imagenet"]
    # the same crop, normalised with the other statistics
    raw = view1 * torch.tensor(cifar_std).view(3, 1, 1) + torch.tensor(cifar_mean).view(3, 1, 1)
    torch.testing.assert_close(imagenet[0], (raw - torch.tensor(net_mean).view(3, 1, 1)) / torch.tensor(net_std).view(3, 1, 1),
                               rtol=1e-5, atol=1e-5)
    video = hvc.build_dataset(Config(image_size=32, variant="video", frames_per_video=2), index, epoch_seed=0)
    assert len(video) == 4  # two sequences of three frames, two frames each per epoch


@pytest.mark.slow
def test_short_training_run_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    index = write_index(tmp_path / "images", 8)
    # 48x48 crops (6x6 loss grids): the model takes any size, the paper's 256 is only the default
    cfg = Config(image_size=48, batch_size=4, crop_scale=(0.3, 1.0))
    dataset = hvc.build_dataset(cfg, index, epoch_seed=0)
    batches = [tuple(torch.stack(items) for items in zip(*(dataset[i] for i in range(start, start + 4))))
               for start in (0, 4)]
    model = hvc.build_model(cfg, total_steps=12)
    optimizer, scheduler = hvc.build_optimizer(cfg, model, steps_per_epoch=2)
    assert scheduler is None and optimizer.param_groups[0]["lr"] == 1e-3
    model.train()
    losses = []
    for step in range(12):
        loss, terms = hvc.training_step(model, batches[step % 2])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(terms) >= {"spatial", "flow", "total", "momentum"}
    assert terms["total"] == pytest.approx(-2 * (terms["spatial"] + terms["flow"]), abs=1e-5)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first - 1.0, losses


def test_export_loads_into_the_propagation_encoder(tmp_path):
    torch.manual_seed(0)
    model = HVC(total_steps=10)
    exported = hvc.export(model, Config(), {"steps": 3})
    path = tmp_path / "hvc.pt"
    torch.save(exported, path)
    encoder = build_encoder("hvc_r18")
    report = load_weights(encoder, path, "vcorr")
    assert report.complete and not report.unexpected
    assert all(key.startswith("layer4.") for key in report.ignored)
    assert torch.equal(encoder.layer3[1].conv2.weight, model.online_encoder.layer3[1].conv2.weight)
    assert exported["arch"] == "hvc_r18_train" and exported["meta"] == {"steps": 3}


def test_export_is_the_vcorr_checkpoint_save_weights_writes(tmp_path):
    # One writer of the vcorr format: HVC's export and save_weights produce the same object.
    from vcorr.models.weights import save_weights, vcorr_checkpoint

    torch.manual_seed(0)
    model = HVC(total_steps=10)
    exported = hvc.export(model, Config(), {"steps": 3})
    expected = vcorr_checkpoint(model.online_encoder, {"steps": 3})
    save_weights(model.online_encoder, tmp_path / "saved.pt", {"steps": 3})
    saved = torch.load(tmp_path / "saved.pt", weights_only=True)
    for candidate in (exported, saved):
        assert {key: value for key, value in candidate.items() if key != "encoder"} == \
            {key: value for key, value in expected.items() if key != "encoder"}
        assert candidate["encoder"].keys() == expected["encoder"].keys()
        assert all(torch.equal(candidate["encoder"][key], expected["encoder"][key]) for key in expected["encoder"])


def _original_flow(flow: FlowHead, a, b):
    """HVC's `Flow.forward` with the head's modules: concat, conv1, bn1, relu, conv2, bn2."""
    x = flow.relu1(flow.bn1(flow.conv1(torch.cat((a, b), 1))))
    return flow.bn2(flow.conv2(x))


def test_flow_head_recomputes_its_intermediates_exactly():
    torch.manual_seed(0)
    flow = FlowHead(2 * 16, 32, 2).train()
    reference = copy.deepcopy(flow)
    a = torch.randn(3, 16, 5, 6, requires_grad=True)
    b = torch.randn(3, 16, 5, 6)
    upstream = torch.randn(3, 2, 5, 6)

    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = flow(a, b)
    # Kept for backward: the inputs (alive anyway), bn2's 2-channel input, per-channel tensors; no
    # 32-channel hidden map (the original keeps conv1's and the ReLU's outputs, [3, 32, 5, 6]).
    assert (3, 16, 5, 6) in saved and (3, 2, 5, 6) in saved
    assert not [shape for shape in saved if len(shape) == 4 and shape[1] == 32], saved
    (out * upstream).sum().backward()
    grad_a = a.grad.clone()
    a.grad = None
    expected = _original_flow(reference, a, b)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_a, a.grad, rtol=1e-5, atol=1e-6)
    for (name, ours), theirs in zip(flow.named_parameters(), reference.parameters()):
        # (conv1.bias: zero in exact arithmetic, train-mode BN removes it; both are rounding noise)
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-5, msg=name)
    # Train-mode BN statistics updated once per forward, as the original's (not again in backward).
    for (name, ours), theirs in zip(flow.named_buffers(), reference.buffers()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7, msg=name)
    assert int(flow.bn1.num_batches_tracked) == 1
    # Eval mode and no-grad calls use the running statistics and leave them alone.
    flow.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(flow(a, b), _original_flow(reference, a, b), rtol=1e-6, atol=1e-6)
    assert int(flow.bn1.num_batches_tracked) == 1
