"""The shared training machinery: configs, two-view crops, the resumable sampler, and `vcorr train`
end to end on tiny images (logs, export, refusals of bad input)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from train_fixtures import CONFIG, METHOD, assert_identical, run_train, run_train_process, write_images
from vcorr.errors import VcorrError
from vcorr.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from vcorr.train import load_config
from vcorr.train.data import (RandomResizedCropBox, ResumableSampler, TwoViewImages, frames_per_video,
                              normalised_box, sample_generator)


# --------------------------------------------------------------------------------------------
# Config


def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"method: {METHOD}\nepochs: 3\nshuffle: false\n")
    config = load_config(METHOD, path, ["batch_size=8", "amp=true", "max_steps=null"])
    assert (config.epochs, config.shuffle, config.batch_size, config.amp, config.max_steps) == (3, False, 8, "fp16", None)
    assert config.workers == type(config)().workers  # untouched keys keep the method's default


@pytest.mark.parametrize("text, overrides, message", [
    ("epochz: 3\n", [], "unknown key 'epochz'"),
    ("epochs: three\n", [], "epochs: must be int, got 'three'"),
    ("sync_bn: 1\n", [], "sync_bn: must be bool, got 1"),
    ("amp: fp8\n", [], "amp: 'fp8' is not one of"),
    ("epochs: 2\n", ["batch_sise=3"], "unknown key 'batch_sise'"),
    ("method: stt\n", [], "a config for method 'stt'"),
    ("- 1\n", [], "expected a mapping"),
])
def test_config_errors_name_the_file_and_key(tmp_path, text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(VcorrError) as error:
        load_config(METHOD, path, overrides)
    assert str(path) in str(error.value) and message in str(error.value)


# --------------------------------------------------------------------------------------------
# Crops


def test_crop_is_the_box_resized_and_box_normalised_to_the_image():
    image = Image.effect_mandelbrot((90, 70), (-2, -1.5, 1, 1.5), 60).convert("RGB")
    crop = RandomResizedCropBox(32, scale=(0.0, 1.0))
    generator = torch.Generator().manual_seed(3)
    left, top, w, h = crop.box(90, 70, torch.Generator().manual_seed(3))
    view, box = crop(image, generator)
    expected = image.crop((left, top, left + w, top + h)).resize((32, 32), Image.BILINEAR)
    assert view.size == (32, 32) and np.array_equal(np.asarray(view), np.asarray(expected))
    assert box.tolist() == pytest.approx([left / 89, top / 69, (left + w - 1) / 89, (top + h - 1) / 69])
    assert 0 < w <= 90 and 0 < h <= 70 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_crop_falls_back_to_the_centred_box_within_the_ratio():
    # Scale (0, 0) never gives a crop of positive area: after the tries, the largest centred box
    # whose aspect ratio is inside (3/4, 4/3) (here the image is 2:1, so 4/3).
    crop = RandomResizedCropBox(16, scale=(0.0, 0.0))
    assert crop.box(100, 50, torch.Generator().manual_seed(0)) == (16, 0, 67, 50)
    assert crop.box(30, 90, torch.Generator().manual_seed(0)) == (0, 25, 30, 40)
    assert crop.box(40, 40, torch.Generator().manual_seed(0)) == (0, 0, 40, 40)
    assert normalised_box(0, 0, 40, 40, 40, 40).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_two_view_items_depend_on_seed_epoch_and_index_only(tmp_path):
    index = pd.read_csv(write_images(tmp_path / "images", 6))
    dataset = TwoViewImages(index, size=24, seed=1, epoch=0)
    first = [dataset[item] for item in range(6)]
    again = [dataset[item] for item in reversed(range(6))][::-1]
    for a, b in zip(first, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    view_1, view_2, box_1, box_2 = first[0]
    assert view_1.shape == (3, 24, 24) and not torch.equal(box_1, box_2)  # two independent crops
    other_epoch = TwoViewImages(index, size=24, seed=1, epoch=1)[0]
    assert not torch.equal(other_epoch[2], box_1)
    # Worker processes draw the same items as the main process.
    batches = list(DataLoader(dataset, batch_size=3, num_workers=2))
    assert torch.equal(batches[1][0][2], first[5][0]) and torch.equal(batches[0][3][1], first[1][3])


def test_generator_is_seeded_by_all_three():
    draws = {tuple(torch.rand(2, generator=sample_generator(*key)).tolist()) for key in
             [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]}
    assert len(draws) == 4


def test_frames_per_video_keeps_at_most_the_limit_per_sequence():
    index = pd.DataFrame({"sequence": ["a"] * 10 + ["b"] * 3, "frame": [f"{i:05d}" for i in range(13)],
                          "image": [f"{i}.jpg" for i in range(13)]})
    epoch_0 = frames_per_video(index, 4, seed=5, epoch=0)
    assert epoch_0.sequence.value_counts().to_dict() == {"a": 4, "b": 3}
    assert list(epoch_0.frame) == sorted(epoch_0.frame)  # index order kept
    assert frames_per_video(index, 4, seed=5, epoch=0).equals(epoch_0)
    other = [set(frames_per_video(index, 4, seed=5, epoch=epoch).frame) for epoch in range(1, 6)]
    assert any(frames != set(epoch_0.frame) for frames in other)


# --------------------------------------------------------------------------------------------
# Sampler


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("length, world", [(10, 1), (10, 3), (7, 2)])
def test_sampler_is_distributed_sampler_and_skips_done_batches(shuffle, length, world):
    for rank in range(world):
        reference = DistributedSampler(range(length), num_replicas=world, rank=rank, shuffle=shuffle, seed=4)
        ours = ResumableSampler(length, batch_size=2, shuffle=shuffle, seed=4, rank=rank, world_size=world)
        for epoch in (0, 1):
            reference.set_epoch(epoch)
            ours.set_epoch(epoch)
            expected = list(reference)
            assert list(ours) == expected and len(ours) == len(expected)
            ours.set_epoch(epoch, skip_batches=1)
            assert list(ours) == expected[2:] and len(ours) == len(expected) - 2
        assert ours.batches_per_epoch() == math.ceil(math.ceil(length / world) / 2)


@pytest.mark.parametrize("length, world", [(10, 1), (11, 1), (11, 2), (7, 3)])
def test_sampler_drop_last_is_distributed_sampler_with_a_drop_last_loader(length, world):
    # MoCo / Spa-then-Temp: DataLoader(drop_last=True) over a DistributedSampler.
    for rank in range(world):
        reference = DistributedSampler(range(length), num_replicas=world, rank=rank, shuffle=True, seed=4)
        reference.set_epoch(1)
        batches = [batch.tolist() for batch in DataLoader(range(length), batch_size=2, sampler=reference, drop_last=True)]
        ours = ResumableSampler(length, batch_size=2, shuffle=True, seed=4, rank=rank, world_size=world, drop_last=True)
        ours.set_epoch(1)
        assert ours.batches_per_epoch() == len(batches) == math.ceil(length / world) // 2
        assert list(ours) == sum(batches, []) and len(ours) == 2 * len(batches)
        ours.set_epoch(1, skip_batches=1)
        assert list(ours) == sum(batches[1:], []) and len(ours) == 2 * (len(batches) - 1)


# --------------------------------------------------------------------------------------------
# vcorr train end to end


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_train_logs_exports_and_reports(tmp_path):
    index = write_images(tmp_path / "images", 8)
    workdir, out = tmp_path / "work", tmp_path / "encoder.pth"
    result = run_train_process(index, workdir, out, "epochs=2", "amp=bf16")
    assert result.returncode == 0, result.stderr
    assert "amp: 'bf16' needs CUDA; training in float32 on cpu" in result.stderr  # CPU: warned, float32
    assert "4/4" in result.stderr and "step/s" in result.stderr  # tqdm bar with its rate
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{METHOD}: 4 steps (2.00 epochs) in ") and str(out) in summary
    rows = _rows(workdir / "metrics.csv")
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]
    assert [int(row["epoch"]) for row in rows] == [0, 0, 1, 1]
    assert {"loss", "lr", "images_per_s"} <= rows[0].keys() and float(rows[0]["images_per_s"]) > 0
    assert all(math.isfinite(float(row["loss"])) for row in rows)
    events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    state = load_checkpoint(checkpoint_path(workdir))
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 0, 4)
    assert state["config"]["epochs"] == 2 and state["config"]["image_size"] == 32
    assert "epochs: 2" in (workdir / "config.yaml").read_text()
    assert out.is_file() and torch.load(out, map_location="cpu", weights_only=False)
    # Rerunning a completed run trains no further and exports the same encoder again.
    again = run_train(index, workdir, tmp_path / "again.pth", "epochs=2", "amp=bf16")
    assert again.returncode == 0, again.stderr
    assert_identical(torch.load(out, weights_only=False), torch.load(tmp_path / "again.pth", weights_only=False))
    assert len(_rows(workdir / "metrics.csv")) == 4


@pytest.mark.slow
def test_drop_last_drops_the_partial_batch_and_resumes_exactly(tmp_path):
    index = write_images(tmp_path / "images", 10)  # batch 4: 2 whole batches per epoch, 2 images left
    run = ("epochs=2", "shuffle=true", "drop_last=true")
    reference = run_train(index, tmp_path / "work", tmp_path / "encoder.pth", *run)
    assert reference.returncode == 0, reference.stderr
    rows = _rows(tmp_path / "work" / "metrics.csv")
    assert [(int(row["epoch"]), int(row["step"])) for row in rows] == [(0, 1), (0, 2), (1, 3), (1, 4)]
    state = load_checkpoint(checkpoint_path(tmp_path / "work"))
    assert (state["steps_per_epoch"], state["epoch"], state["step_in_epoch"]) == (2, 2, 0)
    # Stopped after step 3 (inside epoch 1), then resumed: the same weights as the uninterrupted run.
    workdir = tmp_path / "resumed"
    assert run_train(index, workdir, tmp_path / "first.pth", *run, "max_steps=3").returncode == 0
    assert (load_checkpoint(checkpoint_path(workdir))["epoch"], load_checkpoint(checkpoint_path(workdir))["step_in_epoch"]) == (1, 1)
    resumed = run_train(index, workdir, tmp_path / "resumed.pth", *run)
    assert resumed.returncode == 0 and "resumed at step 3" in resumed.stdout, resumed.stderr
    assert_identical(torch.load(tmp_path / "encoder.pth", weights_only=False), torch.load(tmp_path / "resumed.pth", weights_only=False))


def test_drop_last_with_no_whole_batch_is_refused(tmp_path):
    index = write_images(tmp_path / "images", 3)
    out = tmp_path / "out" / "encoder.pth"
    _refused(run_train(index, tmp_path / "work", out, "drop_last=true"), out, str(index), "no whole batch of 4")


def _refused(result, out, *needles):
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "error" in message and all(needle in message for needle in needles), result.stderr
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_missing_image_is_refused_naming_it(tmp_path):
    index = write_images(tmp_path / "images", 4)
    missing = tmp_path / "images" / f"{2:012d}.jpg"
    missing.unlink()
    out = tmp_path / "out" / "encoder.pth"
    _refused(run_train(index, tmp_path / "work", out), out, str(index), str(missing), "missing")


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_refused_naming_it(tmp_path, workers):
    index = write_images(tmp_path / "images", 4)
    broken = tmp_path / "images" / f"{1:012d}.jpg"
    broken.write_bytes(b"not a jpeg at all")
    out = tmp_path / "out" / "encoder.pth"
    _refused(run_train(index, tmp_path / "work", out, f"workers={workers}"), out, str(broken), "unreadable image")


def test_empty_index_is_refused(tmp_path):
    index = write_images(tmp_path / "images", 1)
    pd.read_csv(index).iloc[:0].to_csv(index, index=False)
    out = tmp_path / "out" / "encoder.pth"
    _refused(run_train(index, tmp_path / "work", out), out, str(index), "lists no images")


def test_config_typo_is_refused_naming_file_and_key(tmp_path):
    index = write_images(tmp_path / "images", 4)
    config = tmp_path / "typo.yaml"
    config.write_text(CONFIG.read_text() + "\nbatchsize: 4\n")
    out = tmp_path / "out" / "encoder.pth"
    _refused(run_train(index, tmp_path / "work", out, config=config), out, str(config), "'batchsize'")


def test_checkpoint_of_another_method_is_refused(tmp_path):
    index = write_images(tmp_path / "images", 4)
    workdir = tmp_path / "work"
    save_checkpoint(checkpoint_path(workdir), {"method": "stt", "config": {"method": "stt"}})
    out = tmp_path / "out" / "encoder.pth"
    for flags in ((), ("--restart",)):  # --restart never discards another training's checkpoint
        result = run_train(index, workdir, out, flags=flags)
        _refused(result, out, str(checkpoint_path(workdir)), "method 'stt'")


@pytest.mark.slow
def test_changed_hyper_parameter_is_refused_unless_restart(tmp_path):
    index = write_images(tmp_path / "images", 4)
    workdir, out = tmp_path / "work", tmp_path / "encoder.pth"
    assert run_train(index, workdir, out, "max_steps=1").returncode == 0
    out.unlink()
    changed = run_train(index, workdir, out, "max_steps=2", "seed=5")
    _refused(changed, out, str(checkpoint_path(workdir)), "seed: 42 -> 5")
    other_index = write_images(tmp_path / "more", 6)
    _refused(run_train(other_index, workdir, out, "max_steps=2"), out, str(checkpoint_path(workdir)),
             "trained on 4 items per epoch", str(other_index))
    # Runtime keys (max_steps, workers, log_every, checkpoint_every) may change: the run continues.
    longer = run_train(index, workdir, out, "max_steps=2", "workers=1")
    assert longer.returncode == 0, longer.stderr
    assert "resumed at step 1" in longer.stdout
    assert load_checkpoint(checkpoint_path(workdir))["global_step"] == 2
    restarted = run_train(index, workdir, out, "max_steps=1", "seed=5", flags=("--restart",))
    assert restarted.returncode == 0, restarted.stderr
    state = load_checkpoint(checkpoint_path(workdir))
    assert state["global_step"] == 1 and state["config"]["seed"] == 5
