"""Resume is exact: a `vcorr train` process killed (SIGKILL) or stopped (SIGTERM) part way and rerun
with the same command ends with the same weights, bit for bit, as a run never interrupted."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from train_fixtures import REPO_ROOT, assert_identical, environment, run_train_process, train_command, write_images
from vcorr.train.checkpoint import checkpoint_path, load_checkpoint

# 12 images, batch 4: 3 steps per epoch; 3 epochs with shuffling, so resuming crosses epochs
# and restores the sampler's order and position.
RUN = ("epochs=3", "shuffle=true")
LAST_STEP = 9


def _logged_step(workdir) -> int:
    try:
        with open(workdir / "metrics.csv", newline="") as handle:
            return max((int(row["step"]) for row in csv.DictReader(handle)), default=0)
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def _interrupt(index, workdir, out, signum: int, after_step: int, *overrides: str) -> subprocess.Popen:
    """Start training, wait until it has logged `after_step`, send `signum` to all its processes
    (as Slurm signals every process of a job step: loader workers too); return the process."""
    process = subprocess.Popen(train_command(index, workdir, out, *RUN, *overrides), env=environment(), cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while _logged_step(workdir) < after_step:
        if process.poll() is not None:
            pytest.fail(f"training ended before step {after_step}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no step {after_step} within 240 s")
        time.sleep(0.02)
    os.killpg(process.pid, signum)
    process.wait(timeout=240)
    return process


def _final(workdir, out):
    return torch.load(out, map_location="cpu", weights_only=False), load_checkpoint(checkpoint_path(workdir))


def _compare(reference, resumed):
    (ref_out, ref_state), (out, state) = reference, resumed
    assert_identical(ref_out, out)
    assert_identical({key: ref_state[key] for key in ("model", "optimizer")}, {key: state[key] for key in ("model", "optimizer")})
    for key in ("train_state", "scheduler", "scaler"):
        assert repr(state[key]) == repr(ref_state[key]), key
    (ref_rng,), (rng,) = ref_state["rng"], state["rng"]
    assert torch.equal(rng["torch"], ref_rng["torch"]) and rng["python"] == ref_rng["python"]
    assert all(np.array_equal(a, b) for a, b in zip(rng["numpy"], ref_rng["numpy"]))
    assert state["global_step"] == ref_state["global_step"] == LAST_STEP


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"), 12)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    result = run_train_process(data, folder / "work", folder / "encoder.pth", *RUN, "checkpoint_every=2")
    assert result.returncode == 0, result.stderr
    return _final(folder / "work", folder / "encoder.pth")


@pytest.mark.slow
def test_sigkill_then_rerun_is_bit_identical(data, uninterrupted, tmp_path):
    workdir, out = tmp_path / "work", tmp_path / "encoder.pth"
    # Checkpoints every 2 steps; the kill comes after step 5 was logged, so the rerun restarts from
    # the checkpoint of step 4 (or later) and redoes the steps the killed process had done since.
    killed = _interrupt(data, workdir, out, signal.SIGKILL, 5, "checkpoint_every=2")
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    state = load_checkpoint(checkpoint_path(workdir))
    assert 4 <= state["global_step"] < LAST_STEP
    rows_before = _logged_step(workdir)
    rerun = run_train_process(data, workdir, out, *RUN, "checkpoint_every=2")
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed at step {state['global_step']}" in rerun.stdout
    _compare(uninterrupted, _final(workdir, out))
    with open(workdir / "metrics.csv", newline="") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == list(range(1, LAST_STEP + 1)) and rows_before >= 5  # no row twice after the redo
    assert _tensorboard_steps(workdir, "loss") == steps  # nor in TensorBoard


def _tensorboard_steps(workdir, tag: str) -> list[int]:
    """The steps of every `tag` scalar in the work dir's TensorBoard logs, in the order read."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), purge_orphaned_data=False)
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            steps += [event.step for event in accumulator.Scalars(tag)]
    return sorted(steps)


@pytest.mark.slow
def test_sigterm_checkpoints_mid_epoch_and_rerun_is_bit_identical(data, uninterrupted, tmp_path):
    workdir, out = tmp_path / "work", tmp_path / "encoder.pth"
    # checkpoint_every=0: only epoch ends are scheduled, so the checkpoint after the signal (mid
    # epoch 1) is the one the signal wrote, with the sampler's position inside the epoch.
    # One loader worker: it must survive the signal (the training process stops it).
    stopped = _interrupt(data, workdir, out, signal.SIGTERM, 4, "checkpoint_every=0", "workers=1")
    message = stopped.stderr.read()
    assert stopped.returncode == 128 + signal.SIGTERM, message
    assert "SIGTERM received: stopped after step" in message
    assert not out.exists()
    state = load_checkpoint(checkpoint_path(workdir))
    assert 4 <= state["global_step"] < LAST_STEP
    assert state["step_in_epoch"] == state["global_step"] % 3 and state["epoch"] == state["global_step"] // 3
    rerun = run_train_process(data, workdir, out, *RUN, "checkpoint_every=0")
    assert rerun.returncode == 0, rerun.stderr
    _compare(uninterrupted, _final(workdir, out))


@pytest.mark.slow
def test_sigusr1_exits_with_its_own_code(data, tmp_path):
    stopped = _interrupt(data, tmp_path / "work", tmp_path / "encoder.pth", signal.SIGUSR1, 1, "checkpoint_every=0")
    assert stopped.returncode == 128 + signal.SIGUSR1
    assert load_checkpoint(checkpoint_path(tmp_path / "work"))["global_step"] >= 1
