"""DDP on CPU (gloo): two ranks with half the batch each compute the gradients one process computes
on the whole batch, and only rank 0 writes anything; `vcorr train` runs under torchrun as is.

SyncBatchNorm needs CUDA, and HVC's BatchNorm layers train on batch statistics. So the ranks are
given batches with the same statistics as the combined batch: every image is listed twice in a
row (rank r takes every second item from r, so each rank sees each image once and the single
process sees each twice) and the crops are the whole image (scale 1, ratio 1 on square images).
Mean and biased variance of a batch and of the batch repeated twice are the same, so per-rank BN
equals combined-batch BN, and what is compared is DDP's gradient averaging, the sampler's split
of the global batch and the loss's per-sample mean. The same data serve the several-node test:
the command the workflow builds for `nodes: 2` run as two torchrun "nodes" on this machine.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shlex
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from train_fixtures import (CONFIG, METHOD, REPO_ROOT, TINY, environment, free_port, free_ports, run_torchrun,
                            run_train, tensors, train_command, write_images)
from vcorr.train import distributed, load_config, method_module
from vcorr.train.checkpoint import checkpoint_path, load_checkpoint
from vcorr.train.launch import RENDEZVOUS_PORT, torchrun_prefix
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


def _rank(rank: int, world: int, ports: list[int], folder: str, index: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(ports[0])})
    torch.set_num_threads(1)
    # A whole run, each rank given its own work dir and output: rank 1's must stay empty.
    config = load_config(METHOD, CONFIG, [*SAME_STATISTICS, "max_steps=2"])
    train(METHOD, config, index, f"{folder}/work{rank}", f"{folder}/out{rank}/encoder.pth", device="cpu")
    # The second process group of these processes on a port of its own: on the first one, rank 1
    # may read rank 0's address from the first group's store and wait on it for ever.
    os.environ["MASTER_PORT"] = str(ports[1])
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
    mp.spawn(_rank, args=(2, free_ports(2), str(tmp_path), str(duplicated)), nprocs=2, join=True)
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


@pytest.mark.slow
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


def _fake_slurm(folder, port: int) -> dict[str, str]:
    """The environment of a job on two nodes (job 4242) whose Slurm commands act on this machine:
    `srun` starts its command once per node of $SLURM_NNODES as local processes (one task per
    node, as --ntasks-per-node=1 asks), `scontrol show hostnames` names 127.0.0.1 first; `python3`
    and `vcorr` are this interpreter and this checkout's CLI."""
    folder.mkdir()
    scripts = {
        "srun": 'shift; pids=(); for node in $(seq 0 $((SLURM_NNODES - 1))); do '
                'SLURM_NODEID=$node SLURM_PROCID=$node "$@" & pids+=($!); done; '
                'code=0; for pid in "${pids[@]}"; do wait "$pid" || code=$?; done; exit $code',
        "scontrol": 'printf "127.0.0.1\\nnode-2\\n"',
        "python3": f'exec {shlex.quote(sys.executable)} "$@"',
        "vcorr": f'exec {shlex.quote(sys.executable)} -m vcorr "$@"',
    }
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (folder / name).chmod(0o755)
    return {**environment(), "PATH": f"{folder}:{os.environ['PATH']}", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "node-[1-2]"}


def _logged(workdir) -> list[dict[str, float]]:
    """metrics.csv's rows, without the timing column."""
    with open(workdir / "metrics.csv", newline="") as handle:
        return [{key: float(value) for key, value in row.items() if key != "images_per_s"}
                for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_the_slurm_command_for_two_nodes_matches_one_process(duplicated, tmp_path):
    """The command rule `train` builds for `nodes: 2` (`vcorr.train.launch`), run as two torchrun
    "nodes" on this machine (c10d rendezvous on 127.0.0.1, gloo, one process per node; the
    rendezvous port is a free one, 29500 may be taken here), trains what one process trains on
    the combined batch: the same logged loss terms and the same exported weights."""
    port = free_port()
    launcher = torchrun_prefix(nodes=2, gpus_per_node=1)
    assert f":{RENDEZVOUS_PORT}\"" in launcher
    overrides = [*SAME_STATISTICS, "max_steps=2", "lr=0.001"]
    two = train_command(duplicated, tmp_path / "work2", tmp_path / "two.pth", *overrides)
    command = f"{launcher.replace(f':{RENDEZVOUS_PORT}', f':{port}')} {shlex.join(['vcorr', *two[3:]])}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                            env=_fake_slurm(tmp_path / "bin", port))
    assert result.returncode == 0, result.stderr[-4000:]
    assert load_checkpoint(checkpoint_path(tmp_path / "work2"))["world_size"] == 2
    one = run_train(duplicated, tmp_path / "work1", tmp_path / "one.pth", *overrides)
    assert one.returncode == 0, one.stderr[-4000:]

    two_logged, one_logged = _logged(tmp_path / "work2"), _logged(tmp_path / "work1")
    assert [row["step"] for row in two_logged] == [row["step"] for row in one_logged] == [1, 2]
    for two_row, one_row in zip(two_logged, one_logged):
        assert two_row.keys() == one_row.keys() and {"loss", "spatial", "flow"} <= two_row.keys()
        for key in two_row:
            assert two_row[key] == pytest.approx(one_row[key], rel=1e-5, abs=1e-7), key
    weights = [tensors(torch.load(tmp_path / name, map_location="cpu")) for name in ("two.pth", "one.pth")]
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 10
    apart = total = 0
    for name, value in weights[0].items():
        if name.endswith("running_var"):
            # Unbiased per-process estimates (n / (n - 1) over each process's n samples): they
            # differ from one process's by design.
            continue
        difference = (value.double() - weights[1][name].double()).abs()
        # Float32 rounding differs with the batch split; Adam turns a gradient that rounds to the
        # other sign into a step of the other sign, so a few weights move apart by up to ~lr / 30.
        assert float(difference.max()) <= 1e-4, name
        apart += int((difference > 1e-6).sum())
        total += difference.numel()
    assert apart <= 1e-3 * total
