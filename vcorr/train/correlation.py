"""Windowed (local) correlation between two feature maps, in plain torch, on CPU and GPU.

`window_correlation(tar, ref, radius)` returns, for every target position (y, x) and every
displacement (dy, dx) with |dy|, |dx| <= R, the raw dot product over channels
`sum_c tar[c, y, x] * ref[c, y + dy, x + dx]` (0 where the displaced position is outside the
image — mmcv's `Correlation` definition, kernel size 1, no normalisation), as `[B, h, w, K]` with
K = (2R+1)^2 displacements in row-major order (dy outer, dx inner; `F.unfold`'s kernel order).
`window_valid(h, w, radius)` says which of them lie inside the image.

How: the target is cut into T x T tiles; each tile needs the (T+2R) x (T+2R) reference region
around it (`F.unfold` of the zero-padded reference with stride T), one batched GEMM gives the
tile's dense correlation against its region, and a fixed index picks each position's window out
of it. The work is chunked over tiles so the transient dense blocks stay small; only the inputs
are saved for backward (a custom autograd function recomputes the regions and runs the two
transposed GEMMs, folding the region gradients back with `F.fold`). Memory therefore grows with
(2R+1)^2 * h * w, never with (h*w)^2, and no CUDA-only operator is needed.

`window_apply(weights, values, radius)` is the matching read-out `out[c, y, x] = sum_k
weights[y, x, k] * values[c, y + dy_k, x + dx_k]` (values zero outside), e.g. the reconstruction
of a colour channel from a windowed affinity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Target tile side: the dense block of a tile is T^2 x (T+2R)^2, i.e. (1 + 2R/T)^2 times the
# tile's window; 16 keeps that factor at 6.25 / 4 for R = 12 / 6 while the GEMMs stay large.
TILE = 16
# Tiles per GEMM chunk: bounds the transient dense blocks (chunk * T^2 * (T+2R)^2 floats).
TILES_PER_CHUNK = 64


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
    """The geometry shared by forward and backward for one input size and radius."""

    def __init__(self, height: int, width: int, radius: int, device: torch.device):
        self.height, self.width, self.radius = height, width, radius
        self.tile = min(TILE, max(height, width))
        self.rows = -(-height // self.tile)
        self.cols = -(-width // self.tile)
        self.span = self.tile + 2 * radius
        # index[t, k]: where target t of a tile finds window entry k in its region (row-major).
        ty, tx = torch.meshgrid(torch.arange(self.tile, device=device), torch.arange(self.tile, device=device),
                                indexing="ij")
        dy, dx = window_offsets(radius, device)
        region_y = ty.reshape(-1, 1) + radius + dy
        region_x = tx.reshape(-1, 1) + radius + dx
        self.index = region_y * self.span + region_x

    @property
    def padded_size(self) -> tuple[int, int]:
        return self.rows * self.tile, self.cols * self.tile

    def tar_tiles(self, tar: torch.Tensor) -> torch.Tensor:
        """`[B, C, h, w]` -> `[B * tiles, T^2, C]` (zero-padded to whole tiles)."""
        batch, channels = tar.shape[:2]
        padded_h, padded_w = self.padded_size
        tar = F.pad(tar, (0, padded_w - self.width, 0, padded_h - self.height))
        tar = tar.reshape(batch, channels, self.rows, self.tile, self.cols, self.tile)
        return tar.permute(0, 2, 4, 3, 5, 1).reshape(-1, self.tile * self.tile, channels)

    def untile(self, tiles: torch.Tensor, batch: int) -> torch.Tensor:
        """`[B * tiles, T^2, D]` -> `[B, h, w, D]`."""
        depth = tiles.shape[-1]
        grid = tiles.reshape(batch, self.rows, self.cols, self.tile, self.tile, depth)
        grid = grid.permute(0, 1, 3, 2, 4, 5).reshape(batch, self.rows * self.tile, self.cols * self.tile, depth)
        return grid[:, : self.height, : self.width]

    def tile_grid(self, per_position: torch.Tensor) -> torch.Tensor:
        """`[B, h, w, D]` -> `[B * tiles, T^2, D]` (the inverse of `untile`, zero-padded)."""
        batch, _, _, depth = per_position.shape
        padded_h, padded_w = self.padded_size
        grid = F.pad(per_position, (0, 0, 0, padded_w - self.width, 0, padded_h - self.height))
        grid = grid.reshape(batch, self.rows, self.tile, self.cols, self.tile, depth)
        return grid.permute(0, 1, 3, 2, 4, 5).reshape(-1, self.tile * self.tile, depth)

    def _ref_padding(self) -> tuple[int, int, int, int]:
        padded_h, padded_w = self.padded_size
        r = self.radius
        return r, r + padded_w - self.width, r, r + padded_h - self.height

    def regions(self, ref: torch.Tensor) -> torch.Tensor:
        """`[B, C, h, w]` -> `[B * tiles, C, (T+2R)^2]`: each tile's zero-padded reference region."""
        batch, channels = ref.shape[:2]
        unfolded = F.unfold(F.pad(ref, self._ref_padding()), kernel_size=self.span, stride=self.tile)
        tiles = unfolded.shape[-1]
        return unfolded.reshape(batch, channels, self.span * self.span, tiles).permute(0, 3, 1, 2).reshape(
            batch * tiles, channels, self.span * self.span)

    def fold_regions(self, region_grads: torch.Tensor, batch: int) -> torch.Tensor:
        """Sum `[B * tiles, C, (T+2R)^2]` region gradients back onto the `[B, C, h, w]` reference."""
        channels = region_grads.shape[1]
        tiles = self.rows * self.cols
        columns = region_grads.reshape(batch, tiles, channels * self.span * self.span).permute(0, 2, 1)
        padded_h, padded_w = self.padded_size
        r = self.radius
        folded = F.fold(columns, output_size=(padded_h + 2 * r, padded_w + 2 * r),
                        kernel_size=self.span, stride=self.tile)
        return folded[:, :, r: r + self.height, r: r + self.width]


def _chunks(total: int):
    for start in range(0, total, TILES_PER_CHUNK):
        yield slice(start, min(start + TILES_PER_CHUNK, total))


class _WindowCorrelation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tar: torch.Tensor, ref: torch.Tensor, radius: int) -> torch.Tensor:
        tiling = _Tiling(tar.shape[-2], tar.shape[-1], radius, tar.device)
        tar_tiles = tiling.tar_tiles(tar)
        regions = tiling.regions(ref)
        index = tiling.index.unsqueeze(0)
        out = tar_tiles.new_empty(tar_tiles.shape[0], tar_tiles.shape[1], index.shape[-1])
        for part in _chunks(tar_tiles.shape[0]):
            dense = torch.bmm(tar_tiles[part], regions[part])
            out[part] = torch.take_along_dim(dense, index, dim=2)
        ctx.save_for_backward(tar, ref)
        ctx.radius = radius
        return tiling.untile(out, tar.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        tar, ref = ctx.saved_tensors
        tiling = _Tiling(tar.shape[-2], tar.shape[-1], ctx.radius, tar.device)
        grad_tiles = tiling.tile_grid(grad.to(tar.dtype))
        tar_tiles = tiling.tar_tiles(tar)
        regions = tiling.regions(ref)
        index = tiling.index.unsqueeze(0)
        grad_tar_tiles = torch.empty_like(tar_tiles)
        grad_regions = torch.empty_like(regions)
        for part in _chunks(tar_tiles.shape[0]):
            g = grad_tiles[part]
            # Within a tile row each window entry lands on a distinct region position: scatter.
            dense = g.new_zeros(g.shape[0], g.shape[1], regions.shape[-1])
            dense.scatter_(2, index.expand_as(g), g)
            grad_tar_tiles[part] = torch.bmm(dense, regions[part].transpose(1, 2))
            grad_regions[part] = torch.bmm(tar_tiles[part].transpose(1, 2), dense)
        batch = tar.shape[0]
        grad_tar = tiling.untile(grad_tar_tiles, batch).permute(0, 3, 1, 2).contiguous()
        grad_ref = tiling.fold_regions(grad_regions, batch).contiguous()
        return grad_tar, grad_ref, None


def window_correlation(tar: torch.Tensor, ref: torch.Tensor, radius: int) -> torch.Tensor:
    """Raw windowed correlation `[B, h, w, (2R+1)^2]` of `[B, C, h, w]` maps (see the module doc)."""
    if tar.shape != ref.shape or tar.dim() != 4:
        raise ValueError(f"window_correlation needs two [B, C, h, w] maps of one shape, got "
                         f"{tuple(tar.shape)} and {tuple(ref.shape)}")
    return _WindowCorrelation.apply(tar, ref, int(radius))


def window_softmax(logits: torch.Tensor, radius: int) -> torch.Tensor:
    """Softmax over each position's window `[B, h, w, K]`, out-of-image entries excluded (0)."""
    valid = window_valid(logits.shape[1], logits.shape[2], radius, logits.device)
    return logits.masked_fill(~valid, float("-inf")).softmax(dim=-1)


def window_apply(weights: torch.Tensor, values: torch.Tensor, radius: int) -> torch.Tensor:
    """`out[b, c, y, x] = sum_k weights[b, y, x, k] * values[b, c, y + dy_k, x + dx_k]` (values 0
    outside the image): `[B, h, w, K]` x `[B, C, h, w]` -> `[B, C, h, w]`."""
    batch, channels, height, width = values.shape
    size = 2 * radius + 1
    neighbours = F.unfold(values, kernel_size=size, padding=radius)
    neighbours = neighbours.reshape(batch, channels, size * size, height, width)
    return torch.einsum("bhwk,bckhw->bchw", weights, neighbours)
