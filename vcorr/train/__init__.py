"""Training (stage one and two): one loop (`loop`), one checkpoint module, one distributed helper,
and one module per method holding its model, loss, dataset and export (see `METHODS`).

A method module defines `Config` (a `TrainConfig` subclass), `build_model`, `build_dataset`,
`build_optimizer`, `training_step` and `export`; `vcorr.train.loop.train` drives any of them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from vcorr.config import parse_overrides, read_yaml
from vcorr.errors import VcorrError
from vcorr.provenance import code_digest
from vcorr.train.config import TrainConfig, build_config

# The training methods, each a module of this package of the same name. Named, not imported: the
# code digest of one method's training (`training_code_digest`) then does not cover the others'.
METHODS = ("hvc", "moco", "stt")


def _module_name(method: str) -> str:
    if method not in METHODS:
        raise VcorrError(f"unknown training method '{method}' (known: {', '.join(METHODS)})")
    return f"{__name__}.{method}"


def method_module(method: str) -> ModuleType:
    """The module implementing training method `method` (one of `METHODS`)."""
    return importlib.import_module(_module_name(method))


def training_code_digest(method: str) -> str:
    """The digest of the code that trains `method`: the loop, the method's module and every vcorr
    module they reach (`vcorr.provenance.code_digest`). Recorded in checkpoints and exports."""
    return code_digest(f"{__name__}.loop", _module_name(method))


def export_provenance(path: str | Path) -> dict[str, Any] | None:
    """What `vcorr train` recorded in the model it exported to `path` (method, config, steps,
    `training_code`, ...), or None for a file it did not write (a released checkpoint, another
    format). Each method's export keeps the record where its checkpoint format has room for it:
    `meta` (HVC's vcorr format, Spa-then-Temp's mmcv format) or `vcorr` (MoCo's)."""
    import pickle
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):  # every export is a zip-format torch file
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):
        return None  # not loadable as plain data: not an export of vcorr's
    if not isinstance(checkpoint, dict):
        return None
    for key in ("meta", "vcorr"):
        record = checkpoint.get(key)
        if isinstance(record, dict) and record.get("method") in METHODS and "training_code" in record:
            return record
    return None


def load_config(method: str, file: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The method's `Config` from a YAML file plus `--set key=value` overrides, validated."""
    path = Path(file)
    data = read_yaml(path, "training config")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise VcorrError(f"{path}: expected a mapping of config keys to values")
    named = data.setdefault("method", method)
    if named != method:
        raise VcorrError(f"{path}: a config for method '{named}', not '{method}'")
    config_class = method_module(method).Config
    config = build_config(config_class, data, str(path))
    extra = parse_overrides(overrides or [])
    if "method" in extra:
        raise VcorrError("--set method: the method is chosen with --method")
    if extra:
        config = build_config(config_class, {**data, **extra}, f"{path} with --set {', '.join(extra)}")
    return config
