"""Training (stage one and two): one loop (`loop`), one checkpoint module, one distributed helper,
and one module per method holding its model, loss, dataset and export (see `METHODS`).

A method module defines `Config` (a `TrainConfig` subclass), `build_model`, `build_dataset`,
`build_optimizer`, `training_step` and `export`; `vcorr.train.loop.train` drives any of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vcorr.errors import VcorrError

METHODS = {"hvc": "vcorr.train.hvc", "moco": "vcorr.train.moco", "stt": "vcorr.train.stt"}


def method_module(name: str) -> ModuleType:
    """The module implementing training method `name` (a key of `METHODS`)."""
    if name not in METHODS:
        raise VcorrError(f"unknown training method '{name}' (known: {', '.join(METHODS)})")
    return importlib.import_module(METHODS[name])
