"""Windowed (local) correlation between two feature maps, in plain torch, on CPU and GPU.

`window_correlation(tar, ref, radius)` returns, for every target position (y, x) and every
displacement (dy, dx) with |dy|, |dx| <= R, the raw dot product over channels
`sum_c tar[c, y, x] * ref[c, y + dy, x + dx]` (0 where the displaced position is outside the
image — mmcv's `Correlation` definition, kernel size 1, no normalisation), as `[B, h, w, K]` with
K = (2R+1)^2 displacements in row-major order (dy outer, dx inner; `F.unfold`'s kernel order).
`window_valid(h, w, radius)` says which of them lie inside the image.

How: for each batch element and row displacement dy, one batched GEMM over the image rows
(`[w, C] x [C, w + 2R]` per row, the reference zero-padded) gives every target x against every
reference x' of the displaced row, and the |dx| <= R band of that block is the window row (a
strided view; no unfold). The transient memory is one such block; only the inputs are saved for
backward, where a custom autograd function writes the gradient band into the block and runs the
two transposed GEMMs. Memory therefore grows with (2R+1)^2 * h * w, never with (h*w)^2; the work
is (2R+1) * (w+2R) products per position against h*w for the dense correlation; no CUDA-only
operator is needed.

`window_apply(weights, values, radius)` is the matching read-out `out[c, y, x] = sum_k
weights[y, x, k] * values[c, y + dy_k, x + dx_k]` (values zero outside), e.g. the reconstruction
of a colour channel from a windowed affinity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window_size(radius: int) -> int:
    return (2 * radius + 1) ** 2


def window_offsets(radius: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dx) of the K displacements, each `[K]`, in the order of the last output dimension."""
    steps = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    return dy.reshape(-1), dx.reshape(-1)


def window_valid(height: int, width: int, radius: int, device: torch.device | None = None) -> torch.Tensor:
    """`[h, w, K]` bool: whether position (y, x) displaced by window entry k is inside the image."""
    dy, dx = window_offsets(radius, device)
    ys = torch.arange(height, device=device).view(-1, 1, 1) + dy
    xs = torch.arange(width, device=device).view(1, -1, 1) + dx
    return (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)


def _rows_layout(ref: torch.Tensor, radius: int) -> torch.Tensor:
    """`[B, C, h, w]` -> `[B, h + 2R, C, w + 2R]`: zero-padded, each image row a `[C, w + 2R]` block."""
    return F.pad(ref, (radius, radius, radius, radius)).permute(0, 2, 1, 3).contiguous()


def _band(full: torch.Tensor, radius: int) -> torch.Tensor:
    """`[h, w, w + 2R]` -> the strided view `[h, w, 2R + 1]` of entries (y, x, x + j)."""
    height, width, span = full.shape
    return full.as_strided((height, width, 2 * radius + 1), (width * span, span + 1, 1), full.storage_offset())


class _WindowCorrelation(torch.autograd.Function):
    """For each batch element and each row displacement dy, one batched GEMM over the image rows
    ([w, C] x [C, w + 2R] per row) gives every x against every padded x'; the displacements
    |dx| <= R are a band of that block, read as a strided view. No unfold of the reference and
    only the inputs are saved; backward writes the gradient band into the same block and runs the
    two transposed GEMMs."""

    @staticmethod
    def forward(ctx, tar: torch.Tensor, ref: torch.Tensor, radius: int) -> torch.Tensor:
        batch, channels, height, width = tar.shape
        side = 2 * radius + 1
        rows_tar = tar.permute(0, 2, 3, 1).contiguous()  # [B, h, w, C]
        rows_ref = _rows_layout(ref, radius)
        out = tar.new_empty(batch, height, width, side * side)  # returned as allocated: no view
        windows = out.view(batch, height, width, side, side)
        for item in range(batch):
            for row_shift in range(side):
                full = torch.bmm(rows_tar[item], rows_ref[item, row_shift: row_shift + height])
                windows[item, :, :, row_shift] = _band(full, radius)
        ctx.save_for_backward(tar, ref)
        ctx.radius = radius
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        tar, ref = ctx.saved_tensors
        radius = ctx.radius
        batch, channels, height, width = tar.shape
        side = 2 * radius + 1
        grad = grad.to(tar.dtype).reshape(batch, height, width, side, side)
        rows_tar = tar.permute(0, 2, 3, 1).contiguous()
        rows_ref = _rows_layout(ref, radius)
        grad_tar = torch.zeros_like(rows_tar)
        grad_ref = torch.zeros_like(rows_ref)
        full = tar.new_zeros(height, width, width + 2 * radius)
        band = _band(full, radius)
        for item in range(batch):
            for row_shift in range(side):
                band.copy_(grad[item, :, :, row_shift])
                rows = slice(row_shift, row_shift + height)
                grad_tar[item].baddbmm_(full, rows_ref[item, rows].transpose(1, 2))
                grad_ref[item, rows].baddbmm_(rows_tar[item].transpose(1, 2), full)
        grad_ref = grad_ref[:, radius: radius + height, :, radius: radius + width]
        return grad_tar.permute(0, 3, 1, 2).contiguous(), grad_ref.permute(0, 2, 1, 3).contiguous(), None


def window_correlation(tar: torch.Tensor, ref: torch.Tensor, radius: int) -> torch.Tensor:
    """Raw windowed correlation `[B, h, w, (2R+1)^2]` of `[B, C, h, w]` maps (see the module doc)."""
    if tar.shape != ref.shape or tar.dim() != 4:
        raise ValueError(f"window_correlation needs two [B, C, h, w] maps of one shape, got "
                         f"{tuple(tar.shape)} and {tuple(ref.shape)}")
    return _WindowCorrelation.apply(tar, ref, int(radius))


def window_softmax_(logits: torch.Tensor, radius: int) -> torch.Tensor:
    """Softmax over each position's window `[B, h, w, K]`, out-of-image entries excluded (0).
    Masks `logits` in place (so the masked copy costs no memory)."""
    valid = window_valid(logits.shape[1], logits.shape[2], radius, logits.device)
    return logits.masked_fill_(~valid, float("-inf")).softmax(dim=-1)


class _WindowApply(torch.autograd.Function):
    """`window_apply` one batch element at a time, saving only its inputs (the unfolded values,
    K times their size, are recomputed in backward)."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, values: torch.Tensor, radius: int) -> torch.Tensor:
        batch, channels, height, width = values.shape
        out = values.new_empty(batch, channels, height * width)
        for item in range(batch):
            neighbours = _neighbours(values[item: item + 1], radius)[0]  # [C, hw, K]
            out[item] = (neighbours * weights[item].reshape(1, height * width, -1)).sum(-1)
        ctx.save_for_backward(weights, values)
        ctx.radius = radius
        return out.reshape(batch, channels, height, width)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weights, values = ctx.saved_tensors
        radius = ctx.radius
        batch, channels, height, width = values.shape
        grad = grad.reshape(batch, channels, height * width, 1)
        grad_weights = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_weights = torch.empty_like(weights)
            for item in range(batch):
                neighbours = _neighbours(values[item: item + 1], radius)[0]
                grad_weights[item] = (neighbours * grad[item]).sum(0).reshape(weights.shape[1:])
        if ctx.needs_input_grad[1]:
            grad_values = torch.empty_like(values)
            size = 2 * radius + 1
            for item in range(batch):
                columns = weights[item].reshape(1, height * width, -1) * grad[item]  # [C, hw, K]
                columns = columns.transpose(1, 2).reshape(1, channels * size * size, height * width)
                grad_values[item] = F.fold(columns, output_size=(height, width), kernel_size=size, padding=radius)[0]
        return grad_weights, grad_values, None


def _neighbours(values: torch.Tensor, radius: int) -> torch.Tensor:
    """`[B, C, h, w]` -> `[B, C, hw, K]`: each position's window of values (0 outside)."""
    batch, channels, height, width = values.shape
    unfolded = F.unfold(values, kernel_size=2 * radius + 1, padding=radius)
    return unfolded.reshape(batch, channels, -1, height * width).transpose(2, 3)


def window_apply(weights: torch.Tensor, values: torch.Tensor, radius: int) -> torch.Tensor:
    """`out[b, c, y, x] = sum_k weights[b, y, x, k] * values[b, c, y + dy_k, x + dx_k]` (values 0
    outside the image): `[B, h, w, K]` x `[B, C, h, w]` -> `[B, C, h, w]`, e.g. the reconstruction
    of a colour channel. Only the inputs are kept for backward."""
    if weights.shape[:3] != (values.shape[0], *values.shape[2:]) or weights.shape[3] != window_size(radius):
        raise ValueError(f"window_apply: weights {tuple(weights.shape)} do not fit values "
                         f"{tuple(values.shape)} at radius {radius}")
    return _WindowApply.apply(weights, values, int(radius))
