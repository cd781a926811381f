"""Tiny training inputs for the loop, resume and DDP tests: images written in the test and an
index CSV in the columns of `vcorr data index`, and `vcorr train` run as a real subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vcorr.data.index import INDEX_COLUMNS

REPO_ROOT = Path(__file__).resolve().parents[1]
METHOD = "hvc"
CONFIG = REPO_ROOT / "config" / "train" / "hvc.yaml"
# HVC on 32x32 crops (4x4 loss grids, stride 8), batch 4; subprocesses run on one thread so that
# runs are bit-reproducible and do not crowd the machine.
TINY = ["image_size=32", "batch_size=4", "workers=0", "log_every=1"]


def write_images(folder: Path, count: int, *, square: int | None = None, repeat: int = 1) -> Path:
    """`count` random RGB JPEGs (varied sizes, or `square` x `square`), each listed `repeat` times
    in a row, and their index CSV; returns the CSV path."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(7)
    rows = []
    for number in range(count):
        height, width = (square, square) if square else (60 + 7 * (number % 4), 72 + 5 * (number % 3))
        path = folder / f"{number:012d}.jpg"
        Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=95)
        rows += [["train", "train2017", path.stem, str(path), "", height, width, pd.NA]] * repeat
    index = folder / "index.csv"
    pd.DataFrame(rows, columns=INDEX_COLUMNS).to_csv(index, index=False)
    return index


def train_command(index: Path, workdir: Path, out: Path, *overrides: str, config: Path = CONFIG,
                  method: str = METHOD, flags: tuple[str, ...] = ()) -> list[str]:
    sets = [item for override in [*TINY, *overrides] for item in ("--set", override)]
    return [sys.executable, "-m", "vcorr", "train", "--method", method, "--config", str(config), "--data", str(index),
            "--workdir", str(workdir), "--out", str(out), "--device", "cpu", *sets, *flags]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_train(*args, **kwargs) -> subprocess.CompletedProcess:
    """`vcorr train` through the CLI's `main` in this process (no interpreter start-up: the refusal
    tests stay fast); its exit code and what it printed."""
    from vcorr.cli import main

    argv = train_command(*args, **kwargs)[3:]
    stdout, stderr = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def run_train_process(*args, **kwargs) -> subprocess.CompletedProcess:
    """`vcorr train` as a separate process (what a workflow rule runs)."""
    return subprocess.run(train_command(*args, **kwargs), capture_output=True, text=True, env=environment(),
                          cwd=REPO_ROOT, timeout=300)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (all held at once while they are picked)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def free_port() -> int:
    return free_ports(1)[0]


def run_torchrun(command: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    """A `python -m vcorr ...` command (as `train_command` builds it) under torchrun on CPU."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *command[1:]]
    return subprocess.run(launcher, capture_output=True, text=True, env=environment(), cwd=REPO_ROOT, timeout=300)


def tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts/lists, by its path."""
    found = {}
    if isinstance(obj, torch.Tensor):
        found[prefix] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            found.update(tensors(value, f"{prefix}/{key}"))
    elif isinstance(obj, (list, tuple)):
        for position, value in enumerate(obj):
            found.update(tensors(value, f"{prefix}/{position}"))
    return found


def assert_identical(first, second) -> None:
    """The same tensors under the same paths, bit for bit."""
    a, b = tensors(first), tensors(second)
    assert a.keys() == b.keys()
    assert a, "no tensors compared"
    different = [key for key in a if a[key].dtype != b[key].dtype or not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:5]}"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny tensors gain nothing from more, runs are reproducible, and
    spinning thread pools crowd a shared machine. Autouse where a test module imports it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
