"""The rolling training checkpoint of a work dir: everything needed to continue a run exactly
(weights, optimiser, scheduler, AMP scaler, the model's extra `train_state()`, the sampler's
position in the epoch, every RNG state of every rank), plus the resolved config and provenance.

It is written atomically (temporary name, then rename), so a kill while saving leaves the previous
checkpoint intact. Before resuming, `check_resumable` refuses a checkpoint of another method or
of a config whose training-relevant keys differ, naming the file and the differences. While a run
trains it holds the work dir (`hold_workdir`), so two runs never write into one.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import pickle
import random
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcorr.errors import VcorrError
from vcorr.io import atomic_file

CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = "train.lock"
FORMAT = "vcorr-train-checkpoint"
FORMAT_VERSION = 1


def checkpoint_path(workdir: str | Path) -> Path:
    return Path(workdir) / CHECKPOINT_NAME


@contextlib.contextmanager
def hold_workdir(workdir: str | Path) -> Iterator[None]:
    """Hold `workdir` for this process while the block runs; another holder is an error naming its
    pid, host and start time. The lock is the kernel's (flock on `train.lock`), so it ends with the
    process however the process ends: a killed run never leaves its work dir locked."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not said who it is"
            raise VcorrError(f"{workdir}: in use by another `vcorr train` ({holder}); wait for it to end, "
                             "or use another --workdir") from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {started}\n")
        handle.flush()
        yield


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and CUDA generator states."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """`state` (see `loop.train` for its keys) to `path`, atomically."""
    with atomic_file(path) as temporary:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, temporary)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none; anything else there is an error."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        # Not weights_only: the checkpoint holds RNG states (tuples, numpy arrays) and the
        # config; it is a file this program wrote into the user's own work dir.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise VcorrError(f"{path}: unreadable training checkpoint ({error}); remove it or use another --workdir") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise VcorrError(f"{path}: not a vcorr training checkpoint; remove it or use another --workdir")
    if state.get("format_version") != FORMAT_VERSION:
        raise VcorrError(f"{path}: checkpoint format {state.get('format_version')}, this vcorr reads "
                         f"{FORMAT_VERSION}; use --restart or another --workdir")
    return state


def config_differences(saved: dict[str, Any], current: dict[str, Any], runtime_keys: frozenset[str]) -> list[str]:
    """`key: saved -> current` for every training-relevant key whose value changed."""
    keys = sorted((set(saved) | set(current)) - runtime_keys)
    missing = object()
    return [f"{key}: {saved.get(key, missing)!r} -> {current.get(key, missing)!r}".replace(repr(missing), "(absent)")
            for key in keys if saved.get(key, missing) != current.get(key, missing)]


def check_resumable(state: dict[str, Any], path: str | Path, method: str, config: dict[str, Any],
                    runtime_keys: frozenset[str]) -> None:
    """Refuse to continue from a checkpoint of another method or of a different training config."""
    if state.get("method") != method:
        raise VcorrError(f"{path}: a checkpoint of method '{state.get('method')}', not '{method}': "
                         "use another --workdir (this one belongs to another training)")
    differences = config_differences(state["config"], config, runtime_keys)
    if differences:
        raise VcorrError(f"{path}: the checkpoint was trained with another config ("
                         + "; ".join(differences) + "): rerun with the same settings, or --restart to "
                         "discard it and train from scratch")
