"""Distributed training helpers: the torchrun environment to a process group (NCCL on CUDA, gloo
on CPU), rank queries, and the few collectives the loop and the methods use. With one process
(no torchrun, or WORLD_SIZE=1) every helper is an identity and no process group is created.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist



def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> None:
    """Join the torchrun process group when launched with several processes."""
    if launched_world_size() == 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the only process that logs and writes files."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank_seed(seed: int) -> int:
    """The seed of this rank's global RNGs: offset by rank so ranks do not draw the same numbers."""
    return seed + rank()


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenation over ranks along dim 0 (same shape on every rank), without gradient."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """`tensor` as rank `src` holds it, on every rank (in place)."""
    if world_size() > 1:
        dist.broadcast(tensor, src)
    return tensor


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a tensor every rank holds (a copy)."""
    values = values.clone()
    if world_size() > 1:
        dist.all_reduce(values)
        values /= world_size()
    return values


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (all ranks take the same branch)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
