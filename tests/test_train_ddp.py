"""DDP on CPU (gloo): two ranks with half the batch each compute the gradients one process computes
on the whole batch, and only rank 0 writes anything; `vcorr train` runs under torchrun as is.

SyncBatchNorm needs CUDA, and HVC's BatchNorm layers train on batch statistics. So the ranks are
given batches with the same statistics as the combined batch: every image is listed twice in a
row (rank r takes every second item from r, so each rank sees each image once and the single
process sees each twice) and the crops are the whole image (scale 1, ratio 1 on square images).
Mean and biased variance of a batch and of the batch repeated twice are the same, so per-rank BN
equals combined-batch BN, and what is compared is DDP's gradient averaging, the sampler's split
of the global batch and the loss's per-sample mean.
"""

from __future__ import annotations

import contextlib
import csv
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from train_fixtures import CONFIG, METHOD, TINY, free_port, run_torchrun, train_command, write_images
from vcorr.train import distributed, load_config, method_module
from vcorr.train.checkpoint import checkpoint_path, load_checkpoint
from vcorr.train.loop import make_loader, prepare, train, train_one_epoch

SAME_STATISTICS = [*TINY, "crop_scale=[1.0, 1.0]", "crop_ratio=[1.0, 1.0]", "batch_size=8", "max_steps=1"]


class _Float64(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int):
        return tuple(tensor.double() for tensor in self.dataset[item])


@contextlib.contextmanager
def _in_float64():
    """The method's model and data in float64, so that what differs between one process and two
    is the machinery, not float32 rounding (which reorders with the batch shape, ~1e-5 here)."""
    module = method_module(METHOD)
    build_model, build_dataset = module.build_model, module.build_dataset
    module.build_model = lambda config, total_steps: build_model(config, total_steps).double()
    module.build_dataset = lambda config, index, *, epoch_seed: _Float64(build_dataset(config, index, epoch_seed=epoch_seed))
    try:
        yield
    finally:
        module.build_model, module.build_dataset = build_model, build_dataset


def _first_step_gradients(index, workdir) -> dict[str, torch.Tensor]:
    config = load_config(METHOD, CONFIG, SAME_STATISTICS)
    with _in_float64():
        run, _ = prepare(METHOD, config, index, workdir, device="cpu")
        train_one_epoch(run, make_loader(run), lambda values, images: None)
    return {name: parameter.grad.clone() for name, parameter in run.unwrapped.named_parameters()
            if parameter.grad is not None}


def _rank(rank: int, world: int, port: int, folder: str, index: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    # A whole run, each rank given its own work dir and output: rank 1's must stay empty.
    config = load_config(METHOD, CONFIG, [*SAME_STATISTICS, "max_steps=2"])
    train(METHOD, config, index, f"{folder}/work{rank}", f"{folder}/out{rank}/encoder.pth", device="cpu")
    try:
        gradients = _first_step_gradients(index, f"{folder}/fresh{rank}")
        torch.save(gradients, f"{folder}/gradients{rank}.pt")
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def duplicated(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"), 4, square=40, repeat=2)


@pytest.mark.slow
def test_two_ranks_match_one_process_and_only_rank_0_writes(duplicated, tmp_path):
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path), str(duplicated)), nprocs=2, join=True)
    assert not (tmp_path / "work1").exists() and not (tmp_path / "out1").exists()
    assert (tmp_path / "out0" / "encoder.pth").is_file()
    state = load_checkpoint(checkpoint_path(tmp_path / "work0"))
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["global_step"] == 2
    # The ranks' global RNGs are seeded apart (seed + rank).
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _first_step_gradients(duplicated, tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(tmp_path / f"gradients{rank}.pt") for rank in range(2)]
    assert single.keys() == ranks[0].keys() == ranks[1].keys() and len(single) > 10
    for name, gradient in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # DDP leaves every rank the same average
        assert gradient.dtype == torch.float64
        # float64 through a ResNet-18 reordered by batch shape: ~1e-12 apart.
        assert (ranks[0][name] - gradient).abs().max() <= 1e-9, name
    assert sum(float(gradient.abs().sum()) for gradient in single.values()) > 0


def test_torchrun_runs_the_same_command(tmp_path):
    index = write_images(tmp_path / "images", 8)
    workdir, out = tmp_path / "work", tmp_path / "encoder.pth"
    command = train_command(index, workdir, out, "max_steps=3", "checkpoint_every=1")
    result = run_torchrun(command)
    assert result.returncode == 0, result.stderr
    summaries = [line for line in result.stdout.splitlines() if line.startswith(f"{METHOD}: ")]
    assert len(summaries) == 1 and summaries[0].startswith(f"{METHOD}: 3 steps")  # rank 0 reports
    with open(workdir / "metrics.csv", newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3]
    assert len(list((workdir / "tensorboard").glob("events.*"))) == 1
    assert sorted(path.name for path in workdir.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.csv", "tensorboard", "train.lock"]
    state = load_checkpoint(checkpoint_path(workdir))
    assert state["world_size"] == 2 and state["global_step"] == 3 and out.is_file()
