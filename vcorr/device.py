"""The one reading of `--device`, for propagation and training alike."""

from __future__ import annotations

import os

import torch

from vcorr.errors import VcorrError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """`auto`: this process's GPU when CUDA is available, else the CPU. `cuda` is this process's GPU:
    cuda:LOCAL_RANK under torchrun, cuda:0 otherwise; an explicit `cuda:N` or `cpu` is taken as is.
    A GPU asked for on a machine without CUDA, or an unknown name, is an error."""
    if isinstance(spec, torch.device):
        return spec
    name = "cuda" if spec == "auto" and torch.cuda.is_available() else "cpu" if spec == "auto" else spec
    if name != "cpu" and name != "cuda" and not name.startswith("cuda:"):
        raise VcorrError(f"--device {spec}: unknown device; expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VcorrError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
    if name == "cuda":
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise VcorrError(f"--device {spec}: {error}") from None
