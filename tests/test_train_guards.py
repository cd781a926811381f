"""What keeps a training run trustworthy: divergence stops it without saving a broken state, values
are read as people write them and checked, one run per work dir, TensorBoard without duplicate
steps after a resume, and the training code recorded in checkpoints and exports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest
import torch

from train_fixtures import (CONFIG, METHOD, REPO_ROOT, environment, run_train, run_train_process, tensors,
                            train_command, write_images)
from vcorr.errors import VcorrError
from vcorr.train import load_config, training_code_digest
from vcorr.train.checkpoint import checkpoint_path, load_checkpoint
from vcorr.train.loop import non_finite_entries


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"), 8)


# --- numbers as people write them, and value checks ----------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("1e-4", 1e-4), ("1e30", 1e30), ("3E-5", 3e-5), ("1.0e+30", 1e30), ("2", 2.0)])
def test_learning_rates_as_people_write_them(text, value):
    config = load_config(METHOD, CONFIG, [f"lr={text}"])
    assert config.lr == value and isinstance(config.lr, float)


def test_a_training_yaml_reads_exponents_as_floats(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"method: {METHOD}\nlr: 5e-5\nweight_decay: 1E-6\n")
    config = load_config(METHOD, path)
    assert (config.lr, config.weight_decay) == (5e-5, 1e-6)


@pytest.mark.parametrize(("override", "message"), [
    ("lr=-0.001", "lr: must be >= 0, got -0.001"),
    ("batch_size=0", "batch_size: must be >= 1, got 0"),
    ("weight_decay=-1e-4", "weight_decay: must be >= 0, got -0.0001"),
    ("momentum=1.5", "momentum: must be in [0, 1], got 1.5"),
])
def test_out_of_range_values_are_one_line_errors(data, tmp_path, override, message):
    done = run_train(data, tmp_path / "work", tmp_path / "out.pth", override)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(CONFIG) in lines[0], done.stderr
    assert not (tmp_path / "work").exists()


# --- divergence ---------------------------------------------------------------------------------


def _divergence_message(done: subprocess.CompletedProcess) -> re.Match:
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vcorr train: error:")]
    assert len(errors) == 1, done.stderr
    found = re.search(r"training diverged (at|by) step (\d+): (\S+) is not finite.*last good checkpoint: (.*)$", errors[0])
    assert found, errors[0]
    return found


@pytest.mark.slow
def test_a_diverging_run_stops_and_its_checkpoint_holds_only_finite_tensors(data, tmp_path):
    # lr 1e30 makes the weights non-finite within a few steps; with a checkpoint after every step,
    # the state about to be saved is where it shows first, and the last good one stays on disk.
    workdir, out = tmp_path / "work", tmp_path / "out.pth"
    found = _divergence_message(run_train_process(data, workdir, out, "lr=1e30", "checkpoint_every=1", "epochs=20"))
    state = load_checkpoint(checkpoint_path(workdir))
    assert int(found[2]) == state["global_step"] + 1 >= 2
    assert found[4] == f"{checkpoint_path(workdir)} (step {state['global_step']})"
    floating = {key: value for key, value in tensors({"model": state["model"], "optimizer": state["optimizer"]}).items()
                if value.is_floating_point()}
    assert floating and all(bool(torch.isfinite(value).all()) for value in floating.values())
    assert not out.exists()


@pytest.mark.slow
def test_a_non_finite_loss_stops_before_its_backward_pass(tmp_path):
    # Checkpoints at epoch ends only (4 steps): the loss turns non-finite first, and nothing is saved.
    data = write_images(tmp_path / "images", 16)
    workdir, out = tmp_path / "work", tmp_path / "out.pth"
    found = _divergence_message(run_train_process(data, workdir, out, "lr=1e30", "checkpoint_every=0", "epochs=20"))
    assert found[1] == "at" and int(found[2]) < 4 and found[3] in {"loss", "flow_loss", "spatial_loss", "total_loss"}
    assert found[4] == "none (no checkpoint was written before)"
    assert not checkpoint_path(workdir).exists() and not out.exists()


def test_a_state_with_a_nan_is_never_saved():
    model = torch.nn.Linear(2, 2)
    assert non_finite_entries({"model": model.state_dict()}) == []
    with torch.no_grad():
        model.bias[1] = float("nan")
    optimizer = torch.optim.Adam(model.parameters())
    assert non_finite_entries({"model": model.state_dict(), "optimizer": optimizer.state_dict()}) == ["model.bias"]


# --- one run per work dir -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_the_same_workdir_is_refused_with_the_holders_pid_and_host(data, tmp_path):
    workdir = tmp_path / "work"
    first = subprocess.Popen(train_command(data, workdir, tmp_path / "first.pth", "epochs=200"), env=environment(),
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (workdir / "metrics.csv").exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run logged nothing within 120 s"
            time.sleep(0.05)
        second = run_train(data, workdir, tmp_path / "second.pth", "epochs=200")
        assert second.returncode == 2
        assert f"{workdir}: in use by another `vcorr train` (pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert not (tmp_path / "second.pth").exists()
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=120)
    # The lock ends with its holder: the same command now resumes.
    resumed = run_train(data, workdir, tmp_path / "first.pth", "epochs=200", "max_steps=1")
    assert resumed.returncode == 0, resumed.stderr


# --- provenance ----------------------------------------------------------------------------------


def test_checkpoint_and_export_record_the_training_code(data, tmp_path):
    workdir, out = tmp_path / "work", tmp_path / "out.pth"
    done = run_train(data, workdir, out, "max_steps=2")
    assert done.returncode == 0, done.stderr
    digest = training_code_digest(METHOD)
    assert load_checkpoint(checkpoint_path(workdir))["training_code"] == [digest]
    assert torch.load(out, map_location="cpu", weights_only=True)["meta"]["training_code"] == [digest]
    assert training_code_digest("moco") != digest


def test_unknown_training_method_has_no_digest():
    with pytest.raises(VcorrError, match="unknown training method 'simclr'"):
        training_code_digest("simclr")
