"""Windowed (local) correlation between two feature maps, in plain torch, on CPU and GPU.

`window_correlation(tar, ref, radius)` returns, for every target position (y, x) and every
displacement (dy, dx) with |dy|, |dx| <= R, the raw dot product over channels
`sum_c tar[c, y, x] * ref[c, y + dy, x + dx]` (0 where the displaced position is outside the
image — mmcv's `Correlation` definition, kernel size 1, no normalisation), as `[B, h, w, K]` with
K = (2R+1)^2 displacements in row-major order (dy outer, dx inner; `F.unfold`'s kernel order).
`window_valid(h, w, radius)` says which of them lie inside the image.

How: the target is cut into T x T tiles; each tile needs the (T+2R) x (T+2R) reference region
around it (`F.unfold` of the zero-padded reference, stride T), one batched GEMM gives the tiles'
dense correlation against their regions, and a fixed index picks each position's window out of
it. The GEMMs run one row of tiles and a few batch elements at a time (`CHUNK_FLOATS` per dense
block), so the transient memory is bounded whatever the batch and image size. Only the inputs
are saved for backward: a custom autograd function recomputes the regions, scatters the window
gradients into dense blocks and runs the two transposed GEMMs, folding the region gradients back
with `F.fold`. Memory therefore grows with (2R+1)^2 * h * w, never with (h*w)^2, and no
CUDA-only operator is needed.

`window_apply(weights, values, radius)` is the matching read-out `out[c, y, x] = sum_k
weights[y, x, k] * values[c, y + dy_k, x + dx_k]` (values zero outside), e.g. the reconstruction
of a colour channel from a windowed affinity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Target tile side: a tile's dense block is T^2 x (T+2R)^2, (1 + 2R/T)^2 times its windows'
# entries (6.25 / 4 at R = 12 / 6), against h*w / (2R+1)^2 for the dense correlation.
TILE = 16
# Floats in one GEMM's dense block: bounds the transient memory, whatever the batch and size.
CHUNK_FLOATS = 2**22


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


class _Tiling:
    """Tiles of the target, processed one row of tiles and a few batch elements at a time."""

    def __init__(self, tar: torch.Tensor, radius: int):
        self.batch, self.channels, self.height, self.width = tar.shape
        self.radius = radius
        self.tile = min(TILE, max(self.height, self.width))
        self.rows = -(-self.height // self.tile)
        self.cols = -(-self.width // self.tile)
        self.span = self.tile + 2 * radius
        dense_per_element = self.cols * self.tile**2 * self.span**2
        self.batch_chunk = max(1, CHUNK_FLOATS // dense_per_element)
        # index[t, k]: where target t of a tile finds window entry k in its region (row-major).
        device = tar.device
        ty, tx = torch.meshgrid(torch.arange(self.tile, device=device), torch.arange(self.tile, device=device),
                                indexing="ij")
        dy, dx = window_offsets(radius, device)
        self.index = ((ty.reshape(-1, 1) + radius + dy) * self.span + tx.reshape(-1, 1) + radius + dx).unsqueeze(0)

    @property
    def padded(self) -> tuple[int, int]:
        return self.rows * self.tile, self.cols * self.tile

    def pad_tar(self, tar: torch.Tensor) -> torch.Tensor:
        padded_h, padded_w = self.padded
        return F.pad(tar, (0, padded_w - self.width, 0, padded_h - self.height))

    def pad_ref(self, ref: torch.Tensor) -> torch.Tensor:
        padded_h, padded_w = self.padded
        r = self.radius
        return F.pad(ref, (r, r + padded_w - self.width, r, r + padded_h - self.height))

    def parts(self):
        """(batch slice, tile row, target rows slice, reference region rows slice) per GEMM."""
        for row in range(self.rows):
            for start in range(0, self.batch, self.batch_chunk):
                yield (slice(start, min(start + self.batch_chunk, self.batch)), row,
                       slice(row * self.tile, (row + 1) * self.tile), slice(row * self.tile, row * self.tile + self.span))

    def tar_tiles(self, tar_pad: torch.Tensor, batch: slice, rows: slice) -> torch.Tensor:
        """One row of target tiles `[b * cols, T^2, C]`."""
        part = tar_pad[batch, :, rows]
        t = self.tile
        part = part.reshape(part.shape[0], self.channels, t, self.cols, t).permute(0, 3, 2, 4, 1)
        return part.reshape(-1, t * t, self.channels)

    def regions(self, ref_pad: torch.Tensor, batch: slice, region_rows: slice) -> torch.Tensor:
        """The reference regions `[b * cols, C, (T+2R)^2]` of one row of tiles."""
        strip = ref_pad[batch, :, region_rows]
        unfolded = F.unfold(strip, kernel_size=self.span, stride=self.tile)
        count = strip.shape[0]
        return unfolded.reshape(count, self.channels, self.span**2, self.cols).permute(0, 3, 1, 2).reshape(
            count * self.cols, self.channels, self.span**2)

    def per_position(self, tiles: torch.Tensor) -> torch.Tensor:
        """`[b * cols, T^2, D]` -> `[b, T, cols * T, D]` (one row of tiles back in image order)."""
        t, depth = self.tile, tiles.shape[-1]
        grid = tiles.reshape(-1, self.cols, t, t, depth).permute(0, 2, 1, 3, 4)
        return grid.reshape(grid.shape[0], t, self.cols * t, depth)

    def tiled(self, rows: torch.Tensor) -> torch.Tensor:
        """`[b, T, cols * T, D]` -> `[b * cols, T^2, D]` (the inverse of `per_position`)."""
        t, depth = self.tile, rows.shape[-1]
        grid = rows.reshape(rows.shape[0], t, self.cols, t, depth).permute(0, 2, 1, 3, 4)
        return grid.reshape(-1, t * t, depth)

    def crop(self, padded: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """The `[..., h, w]` image part of a padded `[B, C, H', W']` map; not a view."""
        if padded.shape[-2:] == (self.height, self.width):
            return padded
        return padded[..., offset: offset + self.height, offset: offset + self.width].contiguous()


class _WindowCorrelation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tar: torch.Tensor, ref: torch.Tensor, radius: int) -> torch.Tensor:
        tiling = _Tiling(tar, radius)
        tar_pad, ref_pad = tiling.pad_tar(tar), tiling.pad_ref(ref)
        padded_h, padded_w = tiling.padded
        out = tar.new_empty(tiling.batch, padded_h, padded_w, tiling.index.shape[-1])
        for batch, _, rows, region_rows in tiling.parts():
            dense = torch.bmm(tiling.tar_tiles(tar_pad, batch, rows), tiling.regions(ref_pad, batch, region_rows))
            windows = dense.gather(2, tiling.index.expand(dense.shape[0], -1, -1))
            out[batch, rows] = tiling.per_position(windows)
        ctx.save_for_backward(tar, ref)
        ctx.radius = radius
        # (h, w, K) last: crop the height/width padding (a copy, so the result is no view).
        if (padded_h, padded_w) == (tiling.height, tiling.width):
            return out
        return out[:, : tiling.height, : tiling.width].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        tar, ref = ctx.saved_tensors
        tiling = _Tiling(tar, ctx.radius)
        tar_pad, ref_pad = tiling.pad_tar(tar), tiling.pad_ref(ref)
        padded_h, padded_w = tiling.padded
        grad = grad.to(tar.dtype)
        if (padded_h, padded_w) != (tiling.height, tiling.width):
            grad = F.pad(grad, (0, 0, 0, padded_w - tiling.width, 0, padded_h - tiling.height))
        grad_tar = torch.zeros_like(tar_pad)
        grad_ref = torch.zeros_like(ref_pad)
        r = tiling.radius
        for batch, _, rows, region_rows in tiling.parts():
            g = tiling.tiled(grad[batch, rows])
            regions = tiling.regions(ref_pad, batch, region_rows)
            # Each window entry of a target position lands on a distinct region position: scatter.
            dense = g.new_zeros(g.shape[0], g.shape[1], regions.shape[-1])
            dense.scatter_(2, tiling.index.expand_as(g), g)
            grad_tiles = torch.bmm(dense, regions.transpose(1, 2))
            grad_tar[batch, :, rows] = tiling.per_position(grad_tiles).permute(0, 3, 1, 2)
            grad_regions = torch.bmm(tiling.tar_tiles(tar_pad, batch, rows).transpose(1, 2), dense)
            count = grad_regions.shape[0] // tiling.cols
            columns = grad_regions.reshape(count, tiling.cols, -1).permute(0, 2, 1)
            grad_ref[batch, :, region_rows] += F.fold(columns, output_size=(tiling.span, padded_w + 2 * r),
                                                      kernel_size=tiling.span, stride=tiling.tile)
        return tiling.crop(grad_tar), tiling.crop(grad_ref, r), None


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
