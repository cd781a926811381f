"""Training (stage one and two): one loop (`loop`), one checkpoint module, one distributed helper,
and one module per method holding its model, loss, dataset and export (see `METHODS`).

A method module defines `Config` (a `TrainConfig` subclass), `build_model`, `build_dataset`,
`build_optimizer`, `training_step` and `export`; `vcorr.train.loop.train` drives any of them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from vcorr.config import parse_overrides, read_yaml
from vcorr.errors import VcorrError
from vcorr.train.config import TrainConfig, build_config

METHODS = {"hvc": "vcorr.train.hvc", "moco": "vcorr.train.moco", "stt": "vcorr.train.stt"}


def method_module(name: str) -> ModuleType:
    """The module implementing training method `name` (a key of `METHODS`)."""
    if name not in METHODS:
        raise VcorrError(f"unknown training method '{name}' (known: {', '.join(METHODS)})")
    return importlib.import_module(METHODS[name])


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
