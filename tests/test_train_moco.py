"""MoCo v1/v2 training method (`vcorr.train.moco`) against MoCo's definitions (facebookresearch/moco)."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

from vcorr.errors import VcorrError
from vcorr.models import build_encoder
from vcorr.models.weights import load_weights
from vcorr.train import moco
from vcorr.train import load_config
from train_fixtures import one_thread  # noqa: F401 (autouse: one intra-op thread)

REPO_ROOT = Path(__file__).resolve().parents[1]



def tiny_moco(**overrides) -> moco.MoCo:
    torch.manual_seed(0)
    settings = dict(arch="resnet18", dim=8, queue_size=16, key_momentum=0.9, temperature=0.2, mlp=False)
    settings.update(overrides)
    return moco.MoCo(**settings)


def images(count: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def momentum_updated(model: moco.MoCo) -> moco.MoCo:
    """A copy whose key encoder got m k + (1 - m) q, written from the definition."""
    reference = copy.deepcopy(model)
    query = dict(model.encoder_q.named_parameters())
    with torch.no_grad():
        for name, param in reference.encoder_k.named_parameters():
            param.copy_(model.key_momentum * param + (1 - model.key_momentum) * query[name])
    return reference


def test_construction_matches_moco():
    model = tiny_moco(mlp=True)
    keys = set(model.state_dict())
    assert {key.split(".")[0] for key in keys} == {"encoder_q", "encoder_k", "queue", "queue_ptr"}
    assert {"encoder_q.fc.0.weight", "encoder_q.fc.2.weight", "encoder_k.fc.0.bias"} <= keys
    assert tuple(model.encoder_q.fc[0].weight.shape) == (512, 512)
    assert tuple(model.encoder_q.fc[2].weight.shape) == (8, 512)
    for param_q, param_k in zip(model.encoder_q.parameters(), model.encoder_k.parameters()):
        assert torch.equal(param_q, param_k) and not param_k.requires_grad and param_q.requires_grad
    assert model.queue.shape == (8, 16) and int(model.queue_ptr) == 0
    torch.testing.assert_close(model.queue.norm(dim=0), torch.ones(16))
    assert isinstance(tiny_moco().encoder_q.fc, torch.nn.Linear)


def test_loss_equals_dense_reference():
    model = tiny_moco()
    model.queue.copy_(F.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(3)), dim=0))
    # One step first so that the query and key encoders differ.
    moco.training_step(model, (images(4, 10), images(4, 11)))
    queue = model.queue.clone()
    expected_key_encoder = momentum_updated(model)
    im_q, im_k = images(4, 1), images(4, 2)
    reference = copy.deepcopy(model)

    loss, terms = moco.training_step(model, (im_q, im_k))

    with torch.no_grad():
        q = F.normalize(reference.encoder_q(im_q), dim=1).double()
        k = F.normalize(expected_key_encoder.encoder_k(im_k), dim=1).double()
    total, correct = 0.0, 0
    for n in range(4):
        row = [float((q[n] * k[n]).sum())] + [float((q[n] * queue[:, j].double()).sum()) for j in range(16)]
        row = [value / 0.2 for value in row]
        total += math.log(sum(math.exp(value) for value in row)) - row[0]
        correct += row[0] > max(row[1:])
    assert float(loss.detach()) == pytest.approx(total / 4, rel=1e-5)
    assert terms["loss"] == pytest.approx(total / 4, rel=1e-5)
    assert terms["acc1"] == pytest.approx(100.0 * correct / 4)
    # The step enqueued exactly these keys at the pointer (4: the previous step filled 0..3).
    torch.testing.assert_close(model.queue[:, 4:8], k.T.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.queue[:, 8:], queue[:, 8:], rtol=0, atol=0)
    assert loss.requires_grad


def test_queue_enqueue_wraps_and_refuses_uneven_batches():
    model = tiny_moco()
    original = model.queue.clone()
    batches = [F.normalize(torch.randn(4, 8), dim=1) for _ in range(5)]
    pointers = []
    for keys in batches:
        model.dequeue_and_enqueue(keys)
        pointers.append(int(model.queue_ptr))
    assert pointers == [4, 8, 12, 0, 4]
    # After five batches of 4 into 16 slots: slots 0..3 hold batch 5, 4..15 batches 2..4.
    expected = torch.cat([batches[4], batches[1], batches[2], batches[3]]).T
    torch.testing.assert_close(model.queue, expected, rtol=0, atol=0)
    assert not torch.equal(model.queue, original)
    with pytest.raises(VcorrError, match="not a multiple"):
        model.dequeue_and_enqueue(torch.randn(3, 8))
    with pytest.raises(VcorrError, match="queue_size"):
        moco.Config(batch_size=96, queue_size=65536)


def test_momentum_update_is_parameters_only():
    model = tiny_moco()
    with torch.no_grad():
        for param in model.encoder_q.parameters():
            param.add_(torch.randn_like(param))
        model.encoder_q.bn1.running_mean.fill_(5.0)
    expected = momentum_updated(model)
    buffers_before = {name: value.clone() for name, value in model.encoder_k.named_buffers()}
    model.momentum_update()
    for (name, param), reference in zip(model.encoder_k.named_parameters(), expected.encoder_k.parameters()):
        torch.testing.assert_close(param, reference, rtol=0, atol=1e-7, msg=name)
    for name, value in model.encoder_k.named_buffers():
        assert torch.equal(value, buffers_before[name]), name
    # ... and before the keys are computed, inside forward: the keys come from the updated encoder.
    model = tiny_moco()
    with torch.no_grad():
        for param in model.encoder_q.parameters():
            param.add_(torch.randn_like(param))
    expected = momentum_updated(model)
    im_k = images(4, 5)
    model(images(4, 4), im_k)
    keys = F.normalize(expected.encoder_k(im_k), dim=1)
    torch.testing.assert_close(model.queue[:, :4], keys.T, rtol=1e-4, atol=1e-5)
    stale = F.normalize(tiny_moco().encoder_k(im_k), dim=1)  # keys of the encoder before the update
    assert not torch.allclose(model.queue[:, :4], stale.T, atol=1e-2)


def test_shuffle_bn_single_process_permutes_and_restores():
    model = tiny_moco()
    im_k = images(6, 7)
    seen = []
    model.encoder_k.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    torch.manual_seed(123)
    keys = model.shuffled_keys(im_k)
    torch.manual_seed(123)
    permutation = torch.randperm(6)
    assert not torch.equal(permutation, torch.arange(6))
    assert not torch.equal(permutation[permutation], torch.arange(6))  # not its own inverse
    # The key encoder saw the permuted batch ...
    torch.testing.assert_close(seen[0], im_k[permutation], rtol=0, atol=0)
    # ... and each key is back at its image's position (batch statistics do not depend on order).
    expected = F.normalize(copy.deepcopy(model).encoder_k(im_k), dim=1)
    torch.testing.assert_close(keys, expected, rtol=1e-4, atol=1e-5)
    # Without the restore the rows would be in the permuted order, which differs.
    assert not torch.allclose(keys, expected[permutation], atol=1e-3)


SHUFFLE_WORLD = 2


def _shuffle_worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=SHUFFLE_WORLD)
    try:
        model = tiny_moco()
        share = 4
        im_q = images(share * SHUFFLE_WORLD, 1)[rank * share:(rank + 1) * share]
        im_k = images(share * SHUFFLE_WORLD, 2)[rank * share:(rank + 1) * share]
        torch.manual_seed(100 + rank)  # ranks draw different permutations; rank 0's must win
        logits, _ = model(im_q, im_k)
        torch.save({"logits": logits, "queue": model.queue, "ptr": model.queue_ptr}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_shuffle_bn_two_processes_gloo(tmp_path):
    mp.spawn(_shuffle_worker, args=(str(tmp_path),), nprocs=SHUFFLE_WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(SHUFFLE_WORLD)]

    model = tiny_moco()
    old_queue = model.queue.clone()
    updated = momentum_updated(model)
    im_q, im_k = images(8, 1), images(8, 2)
    torch.manual_seed(100)
    permutation = torch.randperm(8)
    # Rank r encodes the images permutation[4r:4r+4] (BN statistics of that slice); each key
    # goes back to its image.
    keys = torch.empty(8, 8)
    for rank in range(SHUFFLE_WORLD):
        chosen = permutation[rank * 4:(rank + 1) * 4]
        keys[chosen] = F.normalize(updated.encoder_k(im_k[chosen]), dim=1)
    for rank, result in enumerate(results):
        q = F.normalize(copy.deepcopy(model).encoder_q(im_q[rank * 4:(rank + 1) * 4]), dim=1)
        k = keys[rank * 4:(rank + 1) * 4]
        expected = torch.cat([(q * k).sum(1, keepdim=True), q @ old_queue], dim=1) / 0.2
        torch.testing.assert_close(result["logits"], expected, rtol=1e-4, atol=1e-4)
        # Both ranks enqueue all 8 keys, in rank order.
        torch.testing.assert_close(result["queue"][:, :8], keys.T, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result["queue"][:, 8:], old_queue[:, 8:], rtol=0, atol=0)
        assert int(result["ptr"]) == 8
    # Per-rank BN without the shuffle would give other keys: the test sees the difference.
    unshuffled = torch.cat([F.normalize(updated.encoder_k(im_k[r * 4:(r + 1) * 4]), dim=1) for r in range(2)])
    assert not torch.allclose(unshuffled, keys, atol=1e-3)


def test_export_loads_completely_into_vcorr_moco_encoder():
    for mlp in (False, True):
        torch.manual_seed(0)
        model = moco.MoCo("resnet50", dim=128, queue_size=256, mlp=mlp)
        cfg = moco.Config(batch_size=256, queue_size=256, mlp=mlp)
        exported = moco.export(model, cfg, {"epoch": 3})
        assert exported["epoch"] == 3 and exported["arch"] == "resnet50"
        state = exported["state_dict"]
        assert all(key.startswith("module.") for key in state)
        assert {"module.queue", "module.queue_ptr", "module.encoder_k.conv1.weight"} <= set(state)
        head = {"module.encoder_q.fc.0.weight", "module.encoder_q.fc.2.weight"} if mlp else {"module.encoder_q.fc.weight"}
        assert head <= set(state)
        encoder = build_encoder("moco_r50")
        report = load_weights(encoder, exported, "moco")
        assert report.complete and not report.unexpected and not report.missing
        loaded = encoder.state_dict()
        for key in ("conv1.weight", "layer3.5.bn3.running_var", "layer1.0.downsample.0.weight"):
            assert torch.equal(loaded[key], model.encoder_q.state_dict()[key])
        assert "module.encoder_k.conv1.weight" in report.ignored and "module.queue" in report.ignored


def test_schedules_hold_each_epochs_lr():
    steps_per_epoch = 3
    for schedule in ("step", "cosine"):
        cfg = moco.Config(batch_size=128, queue_size=256, lr_schedule=schedule)
        model = torch.nn.Linear(2, 2)
        optimizer, scheduler = moco.build_optimizer(cfg, model, steps_per_epoch)
        assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 1e-4
        seen = []
        for _ in range(200 * steps_per_epoch):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        base = 0.03 * 128 / 256  # MoCo README: lr 0.015 for batch 128
        for step, lr in enumerate(seen):
            epoch = step // steps_per_epoch
            if schedule == "cosine":
                expected = base * 0.5 * (1 + math.cos(math.pi * epoch / 200))
            else:
                expected = base if epoch < 120 else base / 10 if epoch < 160 else base / 100
            assert lr == pytest.approx(expected, rel=1e-9, abs=1e-15), (schedule, step)


def test_presets_load_and_differ_as_v2_does():
    v1 = load_config("moco", REPO_ROOT / "config/train/moco_v1.yaml")
    v2 = load_config("moco", REPO_ROOT / "config/train/moco_v2.yaml")
    assert v1 == moco.Config()  # the YAML spells out main_moco.py's defaults
    differences = {key for key, value in v1.as_dict().items() if v2.as_dict()[key] != value}
    assert differences == {"temperature", "mlp", "augmentation", "lr_schedule"}
    assert (v2.temperature, v2.mlp, v2.augmentation, v2.lr_schedule) == (0.2, True, "v2", "cosine")
    with pytest.raises(VcorrError, match="shuffle_bn"):
        moco.Config(sync_bn=True)
    moco.Config(sync_bn=True, shuffle_bn=False)


def write_images(folder: Path, count: int, size: int = 40) -> pd.DataFrame:
    generator = np.random.default_rng(0)
    rows = []
    for item in range(count):
        # Blocky colour patterns: each image is distinct, and its crops share colours.
        blocks = generator.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        array = np.kron(blocks, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
        path = folder / f"{item:03d}.png"
        Image.fromarray(array).save(path)
        rows.append({"sequence": "s", "frame": f"{item:03d}", "image": str(path)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_views_depend_only_on_seed_epoch_index(tmp_path, version):
    index = write_images(tmp_path, 3)
    cfg = moco.Config(image_size=24, augmentation=version)
    dataset = moco.build_dataset(cfg, index, epoch_seed=0)
    torch.manual_seed(5)
    random.seed(5)
    first = dataset[1]
    global_draws = (torch.rand(1), random.random())
    again = moco.build_dataset(cfg, index, epoch_seed=0)[1]
    later = moco.build_dataset(cfg, index, epoch_seed=1)[1]
    torch.manual_seed(5)
    random.seed(5)
    assert (torch.rand(1), random.random()) == global_draws  # the global RNGs are left alone
    assert first[0].shape == (3, 24, 24) and first[1].shape == (3, 24, 24)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], later[0])
    # ImageNet normalisation: a pixel value v maps to (v - mean) / std.
    assert float(first[0].min()) < -1.0 and float(first[0].max()) > 1.0


def test_unreadable_image_names_the_file(tmp_path):
    index = write_images(tmp_path, 2)
    Path(index.image[1]).write_bytes(b"not an image")
    dataset = moco.build_dataset(moco.Config(image_size=24), index, epoch_seed=0)
    with pytest.raises(VcorrError, match="001.png"):
        dataset[1]


@pytest.mark.slow
def test_short_cpu_run_lowers_the_loss():
    # Instance discrimination of 16 random 16x16 images whose two views are independent noisy
    # copies (MoCo's image augmentations slow a tiny run down to hundreds of steps; they are
    # exercised through `vcorr train` below). R18, queue of 16, 60 steps: about ten seconds.
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(16, 3, 16, 16, generator=generator)
    cfg = moco.Config(arch="resnet18", image_size=16, batch_size=8, queue_size=16, dim=16, temperature=0.2,
                      key_momentum=0.9, lr=0.03, lr_batch=8, epochs=30, lr_schedule="cosine")
    torch.manual_seed(0)
    model = moco.build_model(cfg, total_steps=60)
    optimizer, scheduler = moco.build_optimizer(cfg, model, steps_per_epoch=2)
    losses = []
    for _ in range(60):
        chosen = base[torch.randperm(16, generator=generator)[:8]]
        views = tuple(chosen + 0.5 * torch.randn(chosen.shape, generator=generator) for _ in range(2))
        loss, terms = moco.training_step(model, views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(terms["loss"])
    # The first steps compare against the random initial queue; from step 2 it holds real keys
    # (near log 17 = 2.83 while the encoder cannot tell the images apart).
    early, late = np.mean(losses[5:15]), np.mean(losses[-10:])
    assert late < early - 0.25, (early, late, losses)


def test_vcorr_train_moco_runs_and_exports_the_official_layout(tmp_path):
    from vcorr.cli import main

    (tmp_path / "images").mkdir()
    index = write_images(tmp_path / "images", 8)
    index.to_csv(tmp_path / "index.csv", index=False)
    out = tmp_path / "moco.pth.tar"
    settings = ["arch=resnet18", "image_size=32", "batch_size=4", "queue_size=16", "dim=8", "workers=0",
                "epochs=2", "log_every=1", "max_steps=3"]
    argv = ["train", "--method", "moco", "--config", str(REPO_ROOT / "config/train/moco_v2.yaml"),
            "--data", str(tmp_path / "index.csv"), "--workdir", str(tmp_path / "work"), "--out", str(out),
            "--device", "cpu"] + [item for setting in settings for item in ("--set", setting)]
    assert main(argv) == 0
    exported = torch.load(out, weights_only=True)
    assert exported["arch"] == "resnet18"
    assert int(exported["state_dict"]["module.queue_ptr"]) == 3 * 4 % 16
    metrics = pd.read_csv(tmp_path / "work" / "metrics.csv")
    assert {"loss", "acc1", "acc5"} <= set(metrics.columns) and len(metrics) == 3
    encoder = build_encoder("hvc_r18_train")  # a torchvision R18 with every stage, as the export holds
    report = load_weights(encoder, out, "moco")
    assert report.complete and not report.unexpected and not report.notes


def test_vcorr_train_moco_drops_the_partial_batch_as_main_moco(tmp_path, capsys):
    # 10 images, batch 4: MoCo's loader (drop_last=True) gives 2 whole batches per epoch; a
    # partial batch of 2 would not fit the queue's whole-batch slots.
    from vcorr.cli import main

    (tmp_path / "images").mkdir()
    write_images(tmp_path / "images", 10).to_csv(tmp_path / "index.csv", index=False)
    out = tmp_path / "moco.pth.tar"
    settings = ["arch=resnet18", "image_size=32", "batch_size=4", "queue_size=16", "dim=8", "workers=0",
                "epochs=2", "log_every=1"]
    argv = ["train", "--method", "moco", "--config", str(REPO_ROOT / "config/train/moco_v1.yaml"),
            "--data", str(tmp_path / "index.csv"), "--workdir", str(tmp_path / "work"), "--out", str(out),
            "--device", "cpu"] + [item for setting in settings for item in ("--set", setting)]
    assert main(argv) == 0
    metrics = pd.read_csv(tmp_path / "work" / "metrics.csv")
    assert list(metrics.step) == [1, 2, 3, 4] and list(metrics.epoch) == [0, 0, 1, 1]
    assert int(torch.load(out, weights_only=True)["state_dict"]["module.queue_ptr"]) == 4 * 4 % 16
    with pytest.raises(VcorrError, match="drop_last"):
        moco.Config(drop_last=False)


@pytest.mark.slow
def test_vcorr_train_moco_resumes_exactly(tmp_path, capsys):
    # Queue, pointer, key encoder and the global RNG that draws the shuffle all come back: two
    # steps, then a rerun to four, equals four steps at once.
    from vcorr.cli import main

    (tmp_path / "images").mkdir()
    write_images(tmp_path / "images", 8).to_csv(tmp_path / "index.csv", index=False)

    def run(workdir: str, steps: int) -> dict:
        settings = ["arch=resnet18", "image_size=32", "batch_size=4", "queue_size=8", "dim=8", "workers=0",
                    "epochs=2", f"max_steps={steps}"]
        out = tmp_path / f"{workdir}.pth.tar"
        argv = ["train", "--method", "moco", "--config", str(REPO_ROOT / "config/train/moco_v1.yaml"),
                "--data", str(tmp_path / "index.csv"), "--workdir", str(tmp_path / workdir), "--out", str(out),
                "--device", "cpu"] + [item for setting in settings for item in ("--set", setting)]
        assert main(argv) == 0
        return torch.load(out, weights_only=True)["state_dict"]

    run("resumed", 2)
    resumed = run("resumed", 4)
    assert "resumed at step 2)" in capsys.readouterr().out
    straight = run("straight", 4)
    assert int(straight["module.queue_ptr"]) == 0  # 4 steps x 4 keys wrapped the queue of 8 twice
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
