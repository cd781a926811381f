"""Vision Transformer encoders: the released ViTs of DINO, MAE, MoCo v3, DINOv2 and CropMAE, as
patch-feature extractors (`build_encoder(arch)` consults `VIT_ENCODERS`).

A small module of vcorr's own, not timm: the features must equal the originals' to the last bit
wherever the originals agree with each other, and timm does not reproduce them. On
../shared/testdata/e2e/dino-box-a, timm 1.0.31's `VisionTransformer(dynamic_img_size=True)`
loaded with the fixture's weights differs from DINO's `frame1_feat` by up to 0.064 (fused or
unfused attention alike): timm resamples position embeddings to a `size=` (and with
anti-aliasing by default), DINO with `scale_factor=(n + 0.1) / sqrt(N)`, and the last layers
turn that into visible differences (0.17% of the output pixels, reference/propagation-dino.md).
This module gives DINO's features bit for bit (tests/test_dino_protocol.py).

Every encoder here computes what DINO's `vision_transformer.py` computes in
`get_intermediate_layers(x, n=1)[0]` with the CLS token dropped: patch embedding (a stride-p
convolution: rows and columns beyond the last whole patch are dropped), CLS token, position
embeddings, the blocks, the final LayerNorm (eps 1e-6); output `[N, dim, H // p, W // p]`
(row-major patches, not L2-normalised). Position embeddings stored for an `S x S` grid are resized
as DINO's `interpolate_pos_encoding` does (and DINOv2's, with `interpolate_offset=0.1`,
`antialias=False`, which is the same arithmetic): bicubic with `scale_factor = ((H // p + 0.1) /
S, (W // p + 0.1) / S)`, not `size=` (PyTorch then maps coordinates with that factor: 0.02-0.17%
of output pixels differ otherwise); none when the grid already has `S x S` patches and the input
is square. Families differ in:

- attention arithmetic: `explicit` = `softmax((q @ k^T) * scale) @ v` (DINO; MAE's timm 0.3.2;
  MoCo v3's timm 0.4.9), `sdpa` = `F.scaled_dot_product_attention` (DINOv2's `Attention` without
  xFormers; CropMAE's timm 0.9.16, whose `Block` uses the fused kernel by default);
- LayerScale (`ls1.gamma`, `ls2.gamma`: DINOv2);
- the stored grid: 14 for 224 px at patch 16, 28 at patch 8, 37 for DINOv2's 518 px at patch 14;
- MoCo v3's ViT-S has 12 heads (its README), DeiT's and DINO's 6.

| arch           | released models                    | patch | dim | heads | grid | attention | LayerScale |
|----------------|------------------------------------|-------|-----|-------|------|-----------|------------|
| vit_tiny16     | DINO `vit_tiny` (the e2e fixture)  | 16    | 192 | 3     | 14   | explicit  | no         |
| vit_small16    | DINO ViT-S/16                      | 16    | 384 | 6     | 14   | explicit  | no         |
| vit_small8     | DINO ViT-S/8                       | 8     | 384 | 6     | 28   | explicit  | no         |
| vit_base16     | DINO ViT-B/16, MAE ViT-B/16, MoCo v3 ViT-B/16 | 16 | 768 | 12 | 14 | explicit | no  |
| vit_base8      | DINO ViT-B/8                       | 8     | 768 | 12    | 28   | explicit  | no         |
| mocov3_vits16  | MoCo v3 ViT-S/16                   | 16    | 384 | 12    | 14   | explicit  | no         |
| dinov2_vits14  | DINOv2 ViT-S/14 (no registers)     | 14    | 384 | 6     | 37   | sdpa      | yes        |
| dinov2_vitb14  | DINOv2 ViT-B/14 (no registers)     | 14    | 768 | 12    | 37   | sdpa      | yes        |
| cropmae_vits16 | CropMAE ViT-S/16                   | 16    | 384 | 6     | 14   | sdpa      | no         |

All have 12 blocks, MLP ratio 4, biases on qkv, exact GELU. Parameter names are the originals'
(`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.<i>.{norm1,attn.qkv,attn.proj,ls1.gamma,
norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*`, `norm.*`), so released state dicts map by name
(`vcorr.models.weights`). A random initialisation (weights: null) follows DINO's: truncated
normal (std 0.02) for linear layers, the position embedding and the CLS token, zero biases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Attention = Literal["explicit", "sdpa"]
LAYER_NORM_EPS = 1e-6
# DINO's `interpolate_pos_encoding` offset: "a small number to avoid floating point error".
POSITION_OFFSET = 0.1


@dataclass(frozen=True)
class ViTSpec:
    name: str
    patch: int
    dim: int
    heads: int
    grid: int  # side of the stored position-embedding grid
    attention: Attention = "explicit"
    layer_scale: bool = False
    depth: int = 12
    description: str = ""

    @property
    def stride(self) -> int:
        return self.patch

    @property
    def channels(self) -> int:
        return self.dim


VIT_ENCODERS: dict[str, ViTSpec] = {
    spec.name: spec
    for spec in (
        ViTSpec("vit_tiny16", 16, 192, 3, 14, description="DINO vit_tiny, patch 16 (the e2e fixture)"),
        ViTSpec("vit_small16", 16, 384, 6, 14, description="DINO ViT-S/16"),
        ViTSpec("vit_small8", 8, 384, 6, 28, description="DINO ViT-S/8"),
        ViTSpec("vit_base16", 16, 768, 12, 14, description="DINO / MAE / MoCo v3 ViT-B/16"),
        ViTSpec("vit_base8", 8, 768, 12, 28, description="DINO ViT-B/8"),
        ViTSpec("mocov3_vits16", 16, 384, 12, 14, description="MoCo v3 ViT-S/16 (12 heads)"),
        ViTSpec("dinov2_vits14", 14, 384, 6, 37, "sdpa", True, description="DINOv2 ViT-S/14, 518 px grid, LayerScale"),
        ViTSpec("dinov2_vitb14", 14, 768, 12, 37, "sdpa", True, description="DINOv2 ViT-B/14, 518 px grid, LayerScale"),
        ViTSpec("cropmae_vits16", 16, 384, 6, 14, "sdpa", description="CropMAE ViT-S/16 (timm 0.9 fused attention)"),
    )
}


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kind: Attention) -> None:
        super().__init__()
        self.heads = heads
        self.kind = kind
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, count, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        if self.kind == "sdpa":
            mixed = F.scaled_dot_product_attention(query, key, value)
        else:
            weights = ((query @ key.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            mixed = weights @ value
        return self.proj(mixed.transpose(1, 2).reshape(batch, count, dim))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(tokens)))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens * self.gamma


class Block(nn.Module):
    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.dim, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(spec.dim, spec.heads, spec.attention)
        self.norm2 = nn.LayerNorm(spec.dim, eps=LAYER_NORM_EPS)
        self.mlp = MLP(spec.dim)
        # No LayerScale: no module, so that the state dict has no key the released files lack.
        self.ls1: nn.Module = LayerScale(spec.dim) if spec.layer_scale else nn.Identity()
        self.ls2: nn.Module = LayerScale(spec.dim) if spec.layer_scale else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.ls1(self.attn(self.norm1(tokens)))
        return tokens + self.ls2(self.mlp(self.norm2(tokens)))


def resize_position_embedding(embedding: torch.Tensor, rows: int, cols: int, square: bool) -> torch.Tensor:
    """`[1, 1 + S*S, dim]` position embeddings for a `rows x cols` patch grid, as DINO's
    `interpolate_pos_encoding` (module docstring): the CLS entry kept, the grid bicubically
    resized with `scale_factor = ((rows + 0.1) / S, (cols + 0.1) / S)`; kept as stored only for
    an `S x S` grid of a square input (`square`: equal sides in pixels, DINO's test)."""
    stored = embedding.shape[1] - 1
    side = int(math.sqrt(stored))
    if stored == rows * cols and square:
        return embedding
    dim = embedding.shape[-1]
    grid = embedding[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    factor = ((rows + POSITION_OFFSET) / math.sqrt(stored), (cols + POSITION_OFFSET) / math.sqrt(stored))
    grid = F.interpolate(grid, scale_factor=factor, mode="bicubic")
    if tuple(grid.shape[-2:]) != (rows, cols):  # the offset's purpose: floor((n + 0.1) / S * S) == n
        raise AssertionError(f"position grid resized to {tuple(grid.shape[-2:])}, expected {(rows, cols)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat((embedding[:, :1], grid), dim=1)


class VisionTransformer(nn.Module):
    """Patch features of the last block after the final LayerNorm, `[N, dim, H // p, W // p]`."""

    removed_modules: tuple[str, ...] = ()  # every parameter of a released backbone is used

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.spec = spec
        self.patch_embed = PatchEmbed(spec.patch, spec.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.grid * spec.grid + 1, spec.dim))
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.dim, eps=LAYER_NORM_EPS)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @property
    def stride(self) -> int:
        return self.spec.patch

    @property
    def out_channels(self) -> int:
        return self.spec.dim

    @property
    def input_multiple(self) -> int:
        """Input sides the patch grid covers exactly (vcorr.evaluation.pipeline resizes to them)."""
        return self.spec.patch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.shape[0]
        rows, cols = images.shape[2] // self.spec.patch, images.shape[3] // self.spec.patch
        tokens = self.patch_embed(images)
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        square = images.shape[2] == images.shape[3]
        tokens = tokens + resize_position_embedding(self.pos_embed, rows, cols, square)
        for block in self.blocks:
            tokens = block(tokens)
        patches = self.norm(tokens)[:, 1:]
        return patches.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2)
