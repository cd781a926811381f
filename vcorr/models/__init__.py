"""Encoders (torchvision ResNets with the seeds' modifications, the released ViTs), checkpoint import, the input
normalisations, and the torch-free description of a method's features (`vcorr.models.config`)."""

from __future__ import annotations

import importlib

# Exported names -> their module, imported on first use, so that `vcorr.models.config` is read
# without importing torch (the workflow's DAG reads method entries).
_EXPORTS = {name: "vcorr.models.encoders" for name in ("ENCODERS", "EncoderSpec", "ResNetEncoder", "build_encoder")}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
