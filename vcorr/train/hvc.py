"""HVC (Hybrid Visual Correspondence) training: the model, its EMA target and the hybrid loss.

Reproduces PGSmall/HVC's `models/model.py` (`HVC`, `hybrid_loss`, `Flow`, `ProjBlock`) and the
options of `train_img.py` / `train_vid.py`; see `../shared/reference/method-hvc.md`.

- Online branch: ResNet-18 (stride 1 in layer3 and layer4, 512-d layer4, HVC's init) ->
  projector -> predictor -> L2-normalised `q`. Target branch: EMA copies of the encoder and the
  projector -> L2-normalised `k`, no gradients.
- The EMA step runs inside the training forward, after the online forward and BEFORE the target
  forward, on parameters only (BN buffers of the target come from its own train-mode forwards),
  with momentum `1 - (1 - 0.99) (cos(pi t / T) + 1) / 2`. Its step counter `t` is not a state_dict
  entry (HVC's key layout has none); it travels through `train_state()` so a resumed run
  continues the schedule (the original restarts it: a bug not copied).
- The loss needs only the positive cell pairs (centres closer than `pos_radius` cell diagonals):
  `positive_pairs` finds exactly the pairs of the original's dense `[N, HW, HW]` mask, and the
  spatial and flow terms are sums over those pairs, so memory grows with the number of positives.
  The flow head itself still runs on every cell (its train-mode BN statistics cover all cells,
  as in the original); its intermediates are recomputed in backward instead of kept.
- Checked against the original code (PGSmall/HVC run on this machine): a seeded `HVC` starts
  from the original's exact weights and BN buffers; after a training forward the EMA targets and
  the encoders' BN buffers are bit-identical (the flow head's BN statistics agree to 1e-8: its
  conv1 sums two halves), the loss agrees to 2e-7 and the gradients to 5e-6 relative.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vcorr.errors import VcorrError
from vcorr.models.weights import vcorr_checkpoint
from vcorr.models.encoders import ResNetEncoder, build_encoder, hvc_init
from vcorr.models.preprocess import IMAGENET_MEAN, IMAGENET_STD
from vcorr.train.config import TrainConfig
from vcorr.train.data import TwoViewImages, frames_per_video, normalize

ENCODER_ARCH = "hvc_r18_train"
VARIANTS = ("images", "video")
NORMALISATIONS = {
    # HVC's train_img.py / train_vid.py normalise with CIFAR-10 statistics ...
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # ... while its test-time loader (and vcorr propagate) uses ImageNet's.
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
# Relative slack of the candidate search (float64) over the exact float32 test: float32 rounding
# of the centres and diagonals is ~1e-6 of the coordinates' magnitude, well inside it.
_CANDIDATE_SLACK = 1e-5


# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class Config(TrainConfig):
    """HVC's training options (`core/config.py` defaults, `train_img.py` / `train_vid.py`)."""

    method: str = "hvc"
    variant: str = "images"  # "images": train_img.py (COCO, ...); "video": train_vid.py (YouTube-VOS)
    epochs: int = 20  # --epochs
    batch_size: int = 128  # --batch-size (one GPU in the original; global here)
    seed: int = 42  # --seed
    drop_last: bool = False  # train_img.py / train_vid.py: the DataLoader's default, last partial batch kept
    image_size: int = 256  # --img-size: crops resized to this square
    # None = the original's choice for the variant. Images: no shuffle (train_img.py's DataLoader
    # has no sampler and shuffle=False, a quirk); video: RandomClipSamplerFrame shuffles.
    shuffle: bool | None = None
    # None = the original's choice for the variant. Images: float32 (train_img.py compares
    # --enable-amp, default True, with the string 'True', so AMP is never on); video: fp16.
    amp: bool | str | None = None
    lr: float = 1e-3  # --lr: Adam, constant
    weight_decay: float = 0.0  # --weight-decay
    momentum: float = 0.99  # --momentum-target: base EMA momentum, cosine-increased to 1
    pos_radius: float = 0.1  # --pos-radius, in cell diagonals
    projection_hidden_dim: int = 256  # --projection-hidden-dim
    projection_dim: int = 256  # --projection-dim
    prediction_hidden_dim: int = 256  # --prediction-hidden-dim
    crop_scale: tuple[float, float] = (0.0, 1.0)  # --min-crop / --max-crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCropCoord's default
    crop_tries: int = 10  # RandomResizedCropCoord: tries before the centre-crop fallback
    normalisation: str = "cifar10"  # "cifar10" (the original's training stats) or "imagenet" (its test stats)
    frames_per_video: int = 80  # video variant: --clips-per-video, frames drawn per video each epoch

    BOUNDS: ClassVar[dict[str, str]] = {
        "momentum": "in [0, 1]", "pos_radius": "> 0", "projection_hidden_dim": ">= 1", "projection_dim": ">= 1",
        "prediction_hidden_dim": ">= 1", "crop_tries": ">= 1", "frames_per_video": ">= 1",
    }

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise VcorrError(f"variant: {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.shuffle is None:
            self.shuffle = self.variant == "video"
        if self.amp is None:
            self.amp = "fp16" if self.variant == "video" else "off"
        super().__post_init__()
        if self.normalisation not in NORMALISATIONS:
            raise VcorrError(f"normalisation: {self.normalisation!r} is not one of {', '.join(NORMALISATIONS)}")
        if not 0.0 <= self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise VcorrError(f"crop_scale: {self.crop_scale} is not 0 <= min <= max <= 1")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise VcorrError(f"crop_ratio: {self.crop_ratio} is not 0 < min <= max")


# ----------------------------------------------------------------------------------------------
# Heads


class _ProjectorBlock(nn.Module):
    """`r = lrelu(BN(conv(x)))`, `o = lrelu(BN(conv(r) + r))`, `y = conv(o)` (1x1 convs, HVC's
    `ProjBlock`; modules created in its order so a seeded init draws the same numbers)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.relu = nn.LeakyReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_dim, hidden_dim, 1)
        self.bn1 = nn.BatchNorm2d(hidden_dim)
        self.conv2 = nn.Conv2d(hidden_dim, hidden_dim, 1)
        self.bn2 = nn.BatchNorm2d(hidden_dim)
        self.conv3 = nn.Conv2d(hidden_dim, out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(residual) + residual))
        return self.conv3(out)


class Projector(nn.Module):
    """A projector or predictor; the block sits under `.block` as in HVC's `Space_Proj`, which
    gives the checkpoint keys `<name>.block.conv1.weight`, ..."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.block = _ProjectorBlock(in_dim, hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class FlowHead(nn.Module):
    """HVC's `Flow`: concat(a, b) on channels -> 1x1 conv -> BN -> ReLU -> 1x1 conv to 2 -> BN.

    It runs on every cell of both views, so its 256-channel intermediates (the conv1 output and
    the ReLU output, each the size of the features) would be the largest tensors autograd keeps
    for the loss. When gradients are needed they are not kept but recomputed in backward
    (activation checkpointing): the same operations on the same inputs, so values and gradients
    are bit-identical. Train-mode BN updates its running statistics in the forward only; the
    recomputation normalises with the batch statistics it recomputes, as the forward did.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, out_dim: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, hidden_dim, 1)
        self.bn1 = nn.BatchNorm2d(hidden_dim)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden_dim, out_dim, 1)
        self.bn2 = nn.BatchNorm2d(out_dim)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return self.bn2(self._hidden(a, b, update_statistics=True))
        calls = []

        def hidden(a: Tensor, b: Tensor) -> Tensor:
            # The first call is the forward, a later one backward's recomputation.
            calls.append(None)
            return self._hidden(a, b, update_statistics=len(calls) == 1)

        return self.bn2(checkpoint(hidden, a, b, use_reentrant=False, preserve_rng_state=False))

    def _hidden(self, a: Tensor, b: Tensor, update_statistics: bool) -> Tensor:
        """`conv2(relu(bn1(conv1(concat(a, b)))))`; bn1 as `nn.BatchNorm2d.forward` computes it,
        its running statistics (and batch count) updated only when `update_statistics`."""
        # conv1(concat(a, b)) as the sum of its two halves: the same function without the
        # concatenated copy (and without a gradient for b when b, the target features, needs none).
        channels = a.shape[1]
        weight = self.conv1.weight
        x = F.conv2d(a, weight[:, :channels]) + F.conv2d(b, weight[:, channels:], self.conv1.bias)
        bn = self.bn1
        running_mean, running_var = bn.running_mean, bn.running_var
        if bn.training and update_statistics:
            bn.num_batches_tracked.add_(1)
        elif bn.training:
            # Scratch copies take the recomputation's update (train mode normalises with the batch
            # statistics; the buffers only receive them), and keep the saved tensors the forward's.
            running_mean, running_var = running_mean.clone(), running_var.clone()
        x = F.batch_norm(x, running_mean, running_var, bn.weight, bn.bias, bn.training, bn.momentum, bn.eps)
        return self.conv2(self.relu1(x))


# ----------------------------------------------------------------------------------------------
# Positive pairs and the hybrid loss


def _cell_centres(box: Tensor, cells: int, low: int) -> Tensor:
    """Centres `[N, cells]` along one axis (`low` = 0 for x, 1 for y), computed with the same
    floating-point operations as HVC's `hybrid_loss` so the positive test is bit-identical."""
    index = torch.arange(0.0, float(cells), dtype=box.dtype, device=box.device)
    bin_size = ((box[:, low + 2] - box[:, low]) / cells).view(-1, 1)
    return (index + 0.5) * bin_size + box[:, low].view(-1, 1)


def _candidate_intervals(centre_q: Tensor, box_k: Tensor, cells: int, low: int, reach: Tensor) -> tuple[Tensor, Tensor]:
    """For each query centre `[N, Q]`, the first index and the count `[N, Q]` of the key cells
    (along one axis) whose centre lies within `reach` `[N]`: a superset of the positives' range."""
    start = box_k[:, low].double().view(-1, 1)
    bin_size = ((box_k[:, low + 2].double() - box_k[:, low].double()) / cells).view(-1, 1)
    centre = centre_q.double()
    reach = reach.view(-1, 1)
    degenerate = bin_size == 0  # a zero-width box: every key centre is at `start`
    safe = torch.where(degenerate, torch.ones_like(bin_size), bin_size)
    ends = torch.stack(((centre - reach - start) / safe - 0.5, (centre + reach - start) / safe - 0.5))
    first = torch.ceil(ends.min(0).values)
    last = torch.floor(ends.max(0).values)
    near = (centre - start).abs() <= reach
    first = torch.where(degenerate, torch.zeros_like(first), first).clamp(0, cells)
    last = torch.where(degenerate, torch.where(near, cells - 1.0, -1.0), last).clamp(-1, cells - 1)
    return first.long(), (last - first + 1).clamp(min=0).long()


def _expand(first: Tensor, count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten per-(sample, query index) intervals into lists (sample, query index, key index)."""
    samples, queries = count.shape
    owner = torch.repeat_interleave(torch.arange(samples * queries, device=count.device), count.flatten())
    offset = torch.cumsum(count.flatten(), 0) - count.flatten()
    key = first.flatten()[owner] + torch.arange(owner.numel(), device=count.device) - offset[owner]
    return owner // queries, owner % queries, key


@torch.no_grad()
def positive_pairs(coord_q: Tensor, coord_k: Tensor, height: int, width: int, pos_radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """The positives of HVC's mask, as index lists `(sample, query cell, key cell)`.

    Cells are numbered row-major (`i * width + j`) on both `height x width` grids; boxes are
    `[N, 4]` `(x1, y1, x2, y2)`. A pair is positive when
    `||centre_q - centre_k|| / max(diag_q, diag_k) < pos_radius` (cell diagonals).

    Exactness: a positive needs `|dx| < R` and `|dy| < R` with `R = pos_radius * max diag`, so for
    each query column (row) the candidate key columns (rows) form an interval, found in float64
    with a small slack (a superset). The candidates are the per-sample products of the column and
    row intervals (a square around each query centre, ~4/pi x the positives); each is then tested
    with the original's own float expression on the same float values, so the result is the dense
    mask's set, bit for bit, without ever building an `[N, HW, HW]` tensor.
    """
    if coord_q.shape != coord_k.shape or coord_q.dim() != 2 or coord_q.shape[1] != 4:
        raise ValueError(f"boxes must both be [N, 4], got {tuple(coord_q.shape)} and {tuple(coord_k.shape)}")
    device = coord_q.device
    xq, yq = _cell_centres(coord_q, width, 0), _cell_centres(coord_q, height, 1)
    xk, yk = _cell_centres(coord_k, width, 0), _cell_centres(coord_k, height, 1)
    diag_q = torch.sqrt(((coord_q[:, 2] - coord_q[:, 0]) / width) ** 2 + ((coord_q[:, 3] - coord_q[:, 1]) / height) ** 2)
    diag_k = torch.sqrt(((coord_k[:, 2] - coord_k[:, 0]) / width) ** 2 + ((coord_k[:, 3] - coord_k[:, 1]) / height) ** 2)
    max_diag = torch.max(diag_q, diag_k)

    magnitude = torch.cat((coord_q, coord_k), 1).double().abs().amax(1)
    radius = pos_radius * max_diag.double()
    reach = radius + _CANDIDATE_SLACK * (radius + magnitude)
    col_first, col_count = _candidate_intervals(xq, coord_k, width, 0, reach)
    row_first, row_count = _candidate_intervals(yq, coord_k, height, 1, reach)
    col_n, col_j, col_v = _expand(col_first, col_count)
    row_n, row_i, row_u = _expand(row_first, row_count)

    # Pair every column candidate with every row candidate of the same sample.
    rows_per_sample = torch.bincount(row_n, minlength=len(coord_q))
    row_offset = torch.cumsum(rows_per_sample, 0) - rows_per_sample
    repeats = rows_per_sample[col_n]
    col = torch.repeat_interleave(torch.arange(col_n.numel(), device=device), repeats)
    within = torch.arange(col.numel(), device=device) - (torch.cumsum(repeats, 0) - repeats)[col]
    row = row_offset[col_n[col]] + within
    n, j, v, i, u = col_n[col], col_j[col], col_v[col], row_i[row], row_u[row]

    dist = torch.sqrt((xq[n, j] - xk[n, v]) ** 2 + (yq[n, i] - yk[n, u]) ** 2) / max_diag[n]
    keep = dist < pos_radius
    n, i, j, u, v = n[keep], i[keep], j[keep], u[keep], v[keep]
    return n, i * width + j, u * width + v


def _pair_sums(pairs: tuple[Tensor, Tensor, Tensor], a: Tensor, b: Tensor) -> Tensor:
    """`sum over positive pairs (n, p, r) of a[n, :, p] . b[n, :, r]`, per sample `[N]`, in float32
    at least (half-precision features under AMP are summed in float32). Only the pairs' feature
    vectors are gathered: memory grows with the number of positives, not with HW x HW."""
    n, cell_a, cell_b = pairs
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a_pairs = a.flatten(2)[n, :, cell_a].to(dtype)  # [P, C]
    b_pairs = b.flatten(2)[n, :, cell_b].to(dtype)
    return torch.zeros(len(a), dtype=dtype, device=a.device).index_add(0, n, (a_pairs * b_pairs).sum(1))


def hybrid_loss(q: Tensor, k: Tensor, coord_q: Tensor, coord_k: Tensor, flow: nn.Module, pos_radius: float = 0.1) -> tuple[Tensor, dict[str, Tensor]]:
    """HVC's `hybrid_loss` for one direction: `-2 (mean_n S + mean_n T)`.

    `q`, `k` `[N, C, H, W]` (L2-normalised over channels by the caller), `coord_q`, `coord_k`
    `[N, 4]` crop boxes. `S[n]` = mean of `q_a . k_b` over the positives, `T[n]` the same for the
    normalised flow vectors `flow(q, k)` and `flow(k, q)` (called in that order: their BN
    running statistics are updated as in the original). Returns the loss and its terms (detached).
    """
    N, _, H, W = q.shape
    pairs = positive_pairs(coord_q, coord_k, H, W, pos_radius)
    positives = torch.bincount(pairs[0], minlength=N)
    denominator = positives.to(torch.promote_types(q.dtype, torch.float32)) + 1e-6
    flow_forward = F.normalize(flow(q, k), dim=1)
    flow_backward = F.normalize(flow(k, q), dim=1)
    with torch.autocast(q.device.type, enabled=False):
        spatial = (_pair_sums(pairs, q, k) / denominator).mean()
        temporal = (_pair_sums(pairs, flow_forward, flow_backward) / denominator).mean()
        loss = -2 * (spatial + temporal)
    terms = {"spatial": spatial.detach(), "flow": temporal.detach(), "positives": positives.sum()}
    return loss, terms


# ----------------------------------------------------------------------------------------------
# The model


def momentum_at(step: int, total_steps: int, base: float = 0.99) -> float:
    """HVC's cosine EMA schedule: `base` at step 0, rising to 1 at `total_steps`."""
    return float(1.0 - (1.0 - base) * (np.cos(np.pi * step / total_steps) + 1.0) / 2.0)


def _hvc_encoder() -> ResNetEncoder:
    """`hvc_r18_train` initialised as HVC's own ResNet draws it from the global RNG.

    HVC's ResNet has no `fc` and draws: the default init of every conv in creation order, then
    N(0, sqrt(2 / fan_out)) for every conv in module order. torchvision's constructor (inside
    `build_encoder`) draws more (its `fc`, its own conv init), so the RNG is rewound and HVC's
    draws replayed: a seeded HVC then starts from the original's exact weights.
    """
    rng = torch.get_rng_state()
    encoder = build_encoder(ENCODER_ARCH)
    torch.set_rng_state(rng)
    for conv in _creation_order(encoder):
        conv.reset_parameters()
    hvc_init(encoder)
    return encoder


def _creation_order(encoder: ResNetEncoder) -> list[nn.Conv2d]:
    """The convs of a torchvision ResNet in the order its constructor creates them (a stage's
    downsample conv is made before its first block)."""
    convs = [encoder.conv1]
    for stage in encoder.spec.stages:
        for block in getattr(encoder, stage):
            if block.downsample is not None:
                convs.append(block.downsample[0])
            convs += [m for name, m in block.named_children() if isinstance(m, nn.Conv2d)]
    return convs


class HVC(nn.Module):
    """HVC's training network. `loss = model(view1, view2, box1, box2)`.

    Views `[B, 3, H, W]` (or clips `[B, T, 3, H, W]`, flattened as the original does), boxes
    `[B, 4]` (`[B, T, 4]`) normalised to the source image. In train mode a call performs one EMA
    step (before the target forward) and returns the symmetric loss
    `l(q1, k2) + l(q2, k1)`; in eval mode it returns the loss without touching the targets.
    `last_terms` holds the last call's terms for logging.
    """

    def __init__(
        self,
        total_steps: int,
        pos_radius: float = 0.1,
        momentum: float = 0.99,
        projection_hidden_dim: int = 256,
        projection_dim: int = 256,
        prediction_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        self.pos_radius = float(pos_radius)
        self.base_momentum = float(momentum)
        self.step = 0
        self.last_terms: dict[str, Tensor | float] = {}

        # Created in HVC's order (online, target, projectors, predictor, flow) so that the state
        # dict's key order and a seeded init are the original's.
        self.online_encoder = _hvc_encoder()
        self.target_encoder = _hvc_encoder()
        # HVC's __init__ infers the feature width with one train-mode forward of zeros through the
        # online encoder, which moves its BN running statistics (var 0.9, one batch tracked).
        with torch.no_grad():
            hidden_dim = self.online_encoder(torch.zeros(1, 3, 64, 64)).shape[1]
        self.online_space_projector = Projector(hidden_dim, projection_hidden_dim, projection_dim)
        self.target_space_projector = Projector(hidden_dim, projection_hidden_dim, projection_dim)
        self.space_predictor = Projector(projection_dim, prediction_hidden_dim, projection_dim)
        self.flow = FlowHead(2 * projection_dim, prediction_hidden_dim, 2)
        for online, target in self._target_pairs():
            target.data.copy_(online.data)
            target.requires_grad = False

    def _target_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        return [
            *zip(self.online_encoder.parameters(), self.target_encoder.parameters()),
            *zip(self.online_space_projector.parameters(), self.target_space_projector.parameters()),
        ]

    def momentum(self) -> float:
        """The EMA momentum the next training step uses."""
        return momentum_at(self.step, self.total_steps, self.base_momentum)

    @torch.no_grad()
    def momentum_update(self) -> float:
        """One EMA step of the target parameters (not BN buffers); returns the momentum used.

        `t * m + o * (1 - m)` evaluated as the original (two products, one sum) for bitwise parity.
        """
        m = self.momentum()
        self.step += 1
        online, target = zip(*self._target_pairs())
        torch._foreach_mul_(list(target), m)
        torch._foreach_add_(list(target), torch._foreach_mul(list(online), 1.0 - m))
        return m

    def forward(self, view1: Tensor, view2: Tensor, box1: Tensor, box2: Tensor) -> Tensor:
        im1, im2 = view1.flatten(0, -4), view2.flatten(0, -4)
        box1, box2 = box1.reshape(-1, 4), box2.reshape(-1, 4)
        if im1.shape != im2.shape or len(box1) != len(im1) or len(box2) != len(im2):
            raise ValueError(
                f"views {tuple(view1.shape)}, {tuple(view2.shape)} and boxes {tuple(box1.shape)}, "
                f"{tuple(box2.shape)} do not match"
            )
        pred1 = F.normalize(self.space_predictor(self.online_space_projector(self.online_encoder(im1))), dim=1)
        pred2 = F.normalize(self.space_predictor(self.online_space_projector(self.online_encoder(im2))), dim=1)
        with torch.no_grad():
            momentum = self.momentum_update() if self.training else self.momentum()
            target1 = F.normalize(self.target_space_projector(self.target_encoder(im1)), dim=1)
            target2 = F.normalize(self.target_space_projector(self.target_encoder(im2)), dim=1)
        loss12, terms12 = hybrid_loss(pred1, target2, box1, box2, self.flow, self.pos_radius)
        loss21, terms21 = hybrid_loss(pred2, target1, box2, box1, self.flow, self.pos_radius)
        loss = loss12 + loss21
        self.last_terms = {
            "spatial": terms12["spatial"] + terms21["spatial"],
            "flow": terms12["flow"] + terms21["flow"],
            "total": loss.detach(),
            "momentum": momentum,
            "positives_per_sample": (terms12["positives"] + terms21["positives"]) / (2 * len(im1)),
        }
        return loss

    # -- state outside state_dict (resume) ------------------------------------------------------

    def train_state(self) -> dict[str, int]:
        return {"ema_step": self.step}

    def load_train_state(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["ema_step"])

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Strict load of HVC's layout; a state dict with no `target_*` key at all (e.g. online
        weights only) starts the targets as copies of the online networks, as HVC's init does."""
        if not any(key.startswith("target_") for key in state_dict):
            state_dict = dict(state_dict)
            for online, target in (("online_encoder.", "target_encoder."), ("online_space_projector.", "target_space_projector.")):
                for key in [key for key in state_dict if key.startswith(online)]:
                    state_dict[target + key[len(online):]] = state_dict[key]
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# ----------------------------------------------------------------------------------------------
# The method-module contract of vcorr.train


def build_model(cfg: Config, total_steps: int) -> HVC:
    return HVC(total_steps, cfg.pos_radius, cfg.momentum, cfg.projection_hidden_dim, cfg.projection_dim,
               cfg.prediction_hidden_dim)


def build_dataset(cfg: Config, index: pd.DataFrame, *, epoch_seed: int) -> TwoViewImages:
    """Items `(view1, view2, box1, box2)`: two crops of one image (`images`) or of one frame, at
    most `frames_per_video` frames per sequence, redrawn each epoch (`video`)."""
    if cfg.variant == "video":
        index = frames_per_video(index, cfg.frames_per_video, cfg.seed, epoch_seed)
    mean, std = NORMALISATIONS[cfg.normalisation]
    return TwoViewImages(index, size=cfg.image_size, seed=cfg.seed, epoch=epoch_seed, scale=cfg.crop_scale,
                         ratio=cfg.crop_ratio, tries=cfg.crop_tries, transform=normalize(mean, std))


def build_optimizer(cfg: Config, model: nn.Module, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, None]:
    # All parameters, the frozen targets included, as the original (they never get a gradient;
    # it keeps the optimiser state's parameter numbering the original's).
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay), None


def training_step(model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
    view1, view2, box1, box2 = batch
    loss = model(view1, view2, box1, box2)
    terms = getattr(model, "module", model).last_terms
    return loss, {name: float(value) for name, value in terms.items()}


def export(model: nn.Module, cfg: Config, meta: dict) -> dict[str, Any]:
    """The online encoder as a vcorr encoder checkpoint (`vcorr.models.weights` format
    `vcorr`, arch `hvc_r18_train`; it loads into `hvc_r18` for propagation, layer4 ignored)."""
    return vcorr_checkpoint(getattr(model, "module", model).online_encoder, meta)
