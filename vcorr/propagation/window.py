"""Spatial windows of the two protocols and the query tiles the windowed affinities are computed on.

A window says which key positions of a context frame a query position may attend to:

- ``circle`` (protocol crw, HVC / videowalk): allowed iff ``sqrt(dy^2 + dx^2) < radius`` on the
  feature grid, the distance computed in float32 as the original does;
- ``square`` (protocol stt, Spa-then-Temp): allowed iff ``|dy| <= R // 2`` and ``|dx| <= R // 2``,
  clipped at the borders.

Queries are processed in rectangular tiles. Every tile is scored against the union rectangle of
its queries' windows (the tile grown by the window's reach, clipped to the frame), and an additive
mask (0 inside a query's window, -inf outside) removes what the window excludes. Tiles and masks
depend only on the frame size, the window and the tile size, so they are built once per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    """A circular (`radius`, strict `<`) or square (`|d| <= half`) neighbourhood on the feature grid."""

    shape: str  # "circle" or "square"
    size: float  # circle: the radius; square: the half width R // 2

    @staticmethod
    def circle(radius: float) -> Window:
        return Window("circle", float(radius))

    @staticmethod
    def square(neighbor_range: int) -> Window:
        return Window("square", float(int(neighbor_range) // 2))

    def allows(self, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """Boolean tensor: may a query attend to a key displaced by (dy, dx) (integer tensors)?"""
        if self.shape == "circle":
            distance = (dy * dy + dx * dx).to(torch.float32) ** 0.5
            return distance < self.size
        return (dy.abs() <= self.size) & (dx.abs() <= self.size)

    @property
    def reach(self) -> int:
        """The largest |dy| (or |dx|) the window allows; it grows a tile into its key rectangle."""
        steps = torch.arange(0, int(self.size) + 2)
        allowed = self.allows(steps, torch.zeros_like(steps))
        return int(steps[allowed].max())


@dataclass
class Tile:
    """One query tile and the key rectangle that holds all its queries' windows."""

    rows: slice  # query rows
    cols: slice  # query columns
    key_rows: slice
    key_cols: slice
    query_index: torch.Tensor  # [Q] flat positions (y * w + x) of the tile's queries, row-major
    key_index: torch.Tensor  # [R, Cn] flat positions of the key rectangle
    mask: torch.Tensor  # [R, Q, Cn] additive: 0 where the window allows the key, -inf elsewhere


def make_tiles(
    height: int,
    width: int,
    window: Window,
    tile_size: tuple[int, int],
    device: torch.device | str = "cpu",
) -> list[Tile]:
    """Cover the `height x width` grid with query tiles of at most `tile_size` (rows, cols)."""
    tile_rows, tile_cols = tile_size
    reach = window.reach
    tiles = []
    for y0 in range(0, height, tile_rows):
        y1 = min(height, y0 + tile_rows)
        for x0 in range(0, width, tile_cols):
            x1 = min(width, x0 + tile_cols)
            ky0, ky1 = max(0, y0 - reach), min(height, y1 + reach)
            kx0, kx1 = max(0, x0 - reach), min(width, x1 + reach)
            query_y, query_x = torch.meshgrid(
                torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij"
            )
            query_y, query_x = query_y.reshape(-1), query_x.reshape(-1)
            key_y = torch.arange(ky0, ky1)
            key_x = torch.arange(kx0, kx1)
            allowed = window.allows(
                key_y[:, None, None] - query_y[None, :, None],
                key_x[None, None, :] - query_x[None, :, None],
            )  # [R, Q, Cn]
            mask = torch.zeros(allowed.shape, dtype=torch.float32)
            mask.masked_fill_(~allowed, float("-inf"))
            tiles.append(
                Tile(
                    rows=slice(y0, y1),
                    cols=slice(x0, x1),
                    key_rows=slice(ky0, ky1),
                    key_cols=slice(kx0, kx1),
                    query_index=(query_y * width + query_x).to(device),
                    key_index=(key_y[:, None] * width + key_x[None, :]).to(device),
                    mask=mask.to(device),
                )
            )
    return tiles
