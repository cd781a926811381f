"""Spa-then-Temp stage two (Li & Liu, CVPR 2023) as a `vcorr train` method.

Reproduces qianduoduolr/Spa-then-Temp's `Framework.forward_train` with `configs/train/train.py`:

- Student: a conv+BN ResNet in mmcv names (`conv1.conv`, `conv1.bn`, `layerX.Y.convN.conv/.bn`,
  `layerX.Y.downsample.conv/.bn`; `ResNet` below), strides (1, 2, 2, 4), no stem pool, outputs
  layer2 / layer3 / layer4 (strides 4, 8, 32), fed the Lab clip after the channel dropout: one of
  a / b (drawn per batch from a generator saved in `train_state()`) is zeroed in both frames and
  the input multiplied by 3 / (3 - 1). mmcv's init (Kaiming fan-out, zero-init residual) unless
  `student_weights` names a stage-one checkpoint (the published config loads one into both nets).
- Teacher: the stage-one ResNet (R50, strides (1, 2, 2, 2), max-pool stem, layer4), on the
  ImageNet-normalised RGB clip, frozen: eval mode, no grad, not in the optimiser. Its weights come
  from `teacher_weights` in any `vcorr.models.weights` format (`moco`: vcorr's MoCo trainer
  output or an official MoCo / DetCo file; `hvc`: a plain torchvision state dict; ...).
- Losses (`loss_terms`): two-level Lab reconstruction through the local correlation (windows
  R = 12 / 6, `vcorr.train.correlation`), local correlation distillation from the 2x2-pooled
  level-0 affinity onto level 1 weighted by the entropy selection map, and global distillation
  of the student's layer4 affinity to the teacher's (temperature 0.07).
- Selection map (`selection`): `original` reproduces the released code, whose flatten is
  commented out: the entropy map `[B, h, w]` is sorted along rows and row int(w * 0.7) - 1 (21 at
  32 x 32) of the sorted map gives a per-column threshold. `flattened` is the intended top-70%:
  positions whose entropy exceeds the int(h * w * 0.7)-th largest over the whole map. (The
  commented-out line also zeroed a 3-pixel border, which at ratio 0.7 would select every interior
  position; it is not offered.)
- Schedule: Adam(5e-5, (0.9, 0.999)) on the student only; mmcv's per-iteration cosine to 0.001x
  with the linear warm-up over 20 epochs from 0.001x (the warm-up factor multiplies the cosine
  value, as mmcv's `LrUpdaterHook` does).
- Data (`ClipPairs`): YouTube-VOS 2018 train from a `vcorr data index` table; one item per video:
  frames [o, o + 1] of its index rows (o uniform), one RandomResizedCrop for both (area U(0.6, 1),
  aspect w/h log-uniform in [1.5, 2], 20 tries then the centred square), resized to
  `image_size` ignoring the aspect (OpenCV bilinear), flipped together with p = 0.5.
- `export`: the student as Spa-then-Temp saves it, `{'meta', 'state_dict': {'backbone.*'}}`
  (vcorr's `stt` weight format).

Test-time encoders: `stt_r18_s8` / `stt_r50_s8` (strides (1, 2, 2, 1), no pool, layer3) are the
published stride-8 models trained with `config/train/stt_r18.yaml` / `stt_r50.yaml`; the s4
variants (`stt_*_s4`: strides (1, 1, 1, 1), mean-pool stem) reuse such weights at test time — the
repository publishes no stride-4 training config.

Known differences: frames are decoded with PIL (the original: OpenCV); the feature sizes and
strides follow the input instead of the original's hard-coded 64 / 32 (256 x 256 training).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vcorr.errors import VcorrError
from vcorr.models.weights import FORMATS, cpu_state_dict, load_weights, mmcv_to_torchvision_key
from vcorr.models.resnet import resnet as torchvision_layout_resnet
from vcorr.models.encoders import EncoderSpec, ResNetEncoder
from vcorr.models.preprocess import normalise_frames
from vcorr.train import distributed
from vcorr.train.config import TrainConfig
from vcorr.train.correlation import window_apply, window_correlation, window_softmax_
from vcorr.train.data import check_images, load_rgb, sample_generator

log = logging.getLogger(__name__)

SELECTIONS = ("original", "flattened")
LOSS_NAMES = ("stage0_l1_loss", "stage1_l1_loss", "local_corrdis_loss", "global_corrdis_loss")
# Lab channels the dropout may zero (a, b) and its rescaling of the remaining ones.
DROPPABLE = (1, 2)
DROPOUT_SCALE = 3 / (3 - 1)


@dataclass
class Config(TrainConfig):
    """`configs/train/train.py` of Spa-then-Temp (R50 student; `stt_r18.yaml` sets depth 18)."""

    method: str = "stt"
    epochs: int = 800
    batch_size: int = 64  # 16 clips per GPU x 4 GPUs
    workers: int = 2  # workers_per_gpu
    sync_bn: bool = True  # train_cfg=dict(syncbn=True); CUDA only: skipped with a warning on CPU
    drop_last: bool = True  # train_dataloader=dict(drop_last=True)
    image_size: int = 256
    # networks
    depth: int = 50
    student_strides: tuple[int, int, int, int] = (1, 2, 2, 4)
    student_weights: str | None = None  # stage-one checkpoint to start from (published: yes)
    student_format: str = "moco"
    teacher_depth: int = 50
    teacher_strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    teacher_weights: str | None = None  # None: a randomly initialised teacher (tests, demos)
    teacher_format: str = "moco"
    # losses
    radius: tuple[int, int] = (12, 6)
    reconstruction_weight: float = 20.0
    teacher_temperature: float = 0.07
    selection: str = "original"
    selection_ratio: float = 0.7
    detach_target: bool = True
    weight_stage0: float = 1.0
    weight_stage1: float = 1.0
    weight_local: float = 1000.0
    weight_global: float = 50.0
    # optimisation
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.001
    warmup_epochs: int = 20
    warmup_ratio: float = 0.001
    # data
    crop_area: tuple[float, float] = (0.6, 1.0)
    crop_aspect: tuple[float, float] = (1.5, 2.0)
    crop_tries: int = 20
    flip: float = 0.5

    BOUNDS: ClassVar[dict[str, str]] = {
        "selection_ratio": "in (0, 1]", "reconstruction_weight": ">= 0", "teacher_temperature": "> 0",
        "min_lr_ratio": ">= 0", "warmup_epochs": ">= 0", "warmup_ratio": ">= 0", "crop_tries": ">= 1",
        "flip": "in [0, 1]", **{f"weight_{term}": ">= 0" for term in ("stage0", "stage1", "local", "global")},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selection not in SELECTIONS:
            raise VcorrError(f"selection: {self.selection!r} is not one of {', '.join(SELECTIONS)}")
        for key in ("depth", "teacher_depth"):
            if getattr(self, key) not in ARCH_SETTINGS:
                raise VcorrError(f"{key}: {getattr(self, key)} is not one of {', '.join(map(str, ARCH_SETTINGS))}")
        for key in ("student_format", "teacher_format"):
            if getattr(self, key) not in FORMATS:
                raise VcorrError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(FORMATS)}")
        if self.radius[0] > 2 * self.radius[1]:
            # The pooled level-0 affinity would reach outside the level-1 windows.
            raise VcorrError(f"radius: level 0's {self.radius[0]} exceeds twice level 1's ({self.radius[1]})")


# --------------------------------------------------------------------------------------------
# Backbone: conv + BN (+ ReLU) modules in mmcv's names. Not vcorr.models.encoders' torchvision
# ResNet, for two reasons: Spa-then-Temp's checkpoints and loader name mmcv's modules
# (`conv1.conv`, `layerX.Y.convN.bn`), and building torchvision's ResNet draws its own weight
# initialisation from the global RNG before any re-initialisation, so a seeded run would not start
# from the weights the original draws with the same seed.

class ConvBN(nn.Module):
    """mmcv `ConvModule(conv_cfg=Conv, norm_cfg=BN)`: bias-free conv, BN, optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.relu is not None else x


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: ConvBN | None):
        super().__init__()
        self.conv1 = ConvBN(cin, planes, 3, stride, 1)
        self.conv2 = ConvBN(planes, planes, 3, 1, 1, relu=False)
        self.downsample = downsample

    def residual_bn(self) -> nn.BatchNorm2d:
        return self.conv2.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv2(self.conv1(x)) + identity)


class Bottleneck(nn.Module):
    """'pytorch' style: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: ConvBN | None):
        super().__init__()
        self.conv1 = ConvBN(cin, planes, 1)
        self.conv2 = ConvBN(planes, planes, 3, stride, 1)
        self.conv3 = ConvBN(planes, planes * 4, 1, relu=False)
        self.downsample = downsample

    def residual_bn(self) -> nn.BatchNorm2d:
        return self.conv3.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


ARCH_SETTINGS = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}
STEM_POOLS = ("max", "mean", "none")


class ResNet(nn.Module):
    """Spa-then-Temp's `ResNet` backbone: four stages with the given first-block strides, no
    dilation, a stem pool (max / mean 3x3 s2 p1 / none); returns the stages in `out_indices`."""

    def __init__(self, depth: int, strides: tuple[int, ...] = (1, 2, 2, 2), stem_pool: str = "max",
                 out_indices: tuple[int, ...] = (3,)):
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise VcorrError(f"ResNet depth {depth} is not one of {', '.join(map(str, ARCH_SETTINGS))}")
        if stem_pool not in STEM_POOLS:
            raise VcorrError(f"stem pool {stem_pool!r} is not one of {', '.join(STEM_POOLS)}")
        block, blocks = ARCH_SETTINGS[depth]
        self.depth, self.strides, self.stem_pool, self.out_indices = depth, tuple(strides), stem_pool, tuple(out_indices)
        self.conv1 = ConvBN(3, 64, 7, 2, 3)
        self.pool = {"max": nn.MaxPool2d(3, 2, 1), "mean": nn.AvgPool2d(3, 2, 1), "none": None}[stem_pool]
        cin = 64
        for stage, (count, stride) in enumerate(zip(blocks, strides)):
            planes = 64 * 2 ** stage
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = ConvBN(cin, planes * block.expansion, 1, stride, relu=False)
            layers = [block(cin, planes, stride, downsample)]
            cin = planes * block.expansion
            layers += [block(cin, planes, 1, None) for _ in range(1, count)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.channels = [64 * 2 ** stage * block.expansion for stage in range(4)]
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv's ResNet init without a checkpoint: Kaiming normal (fan-out) convs, BN (1, 0),
        the last BN of every residual branch zeroed."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                nn.init.zeros_(module.residual_bn().weight)
                nn.init.zeros_(module.residual_bn().bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv1(x)
        if self.pool is not None:
            x = self.pool(x)
        outs = []
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
            if stage in self.out_indices:
                outs.append(x)
            if stage == max(self.out_indices):
                break
        return outs

    def load_stage_one(self, path: str, format: str) -> None:
        """Load a torchvision-layout ResNet checkpoint (any `vcorr.models.weights` format)
        into these mmcv-named modules, as Spa-then-Temp's `_load_torchvision_checkpoint` does."""
        spec = EncoderSpec(f"stt_stage_one_r{self.depth}", self.depth, (1, 2, 2, 2), "max", "layer4")
        network = torchvision_layout_resnet(self.depth)
        encoder = ResNetEncoder(spec, network)
        report = load_weights(encoder, path, format)
        log.info("%s", report.summary())
        torchvision_state = encoder.state_dict()
        state = {}
        for key in self.state_dict():
            state[key] = torchvision_state[mmcv_to_torchvision_key(key)]
        self.load_state_dict(state)


def student_backbone(cfg: Config) -> ResNet:
    return ResNet(cfg.depth, cfg.student_strides, "none", (1, 2, 3))


def teacher_backbone(cfg: Config) -> ResNet:
    return ResNet(cfg.teacher_depth, cfg.teacher_strides, "max", (3,))


# --------------------------------------------------------------------------------------------
# Losses.

def local_affinity(tar: torch.Tensor, ref: torch.Tensor, radius: int,
                   keep_raw: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(A, raw): `A = softmax_window(<tar, ref> / sqrt(C))` `[B, h, w, K]` with out-of-image
    entries excluded, and (with `keep_raw`) a detached copy of the raw window correlation (0
    outside the image). The scaling and masking run in place: A's memory is two windows."""
    raw = window_correlation(tar, ref, radius)
    kept = raw.detach().clone() if keep_raw else None
    return window_softmax_(raw.div_(math.sqrt(tar.shape[1])), radius), kept


def pooled_affinity(fine: torch.Tensor, fine_radius: int, coarse_radius: int) -> torch.Tensor:
    """The 2x2 average pool of the fine affinity over target and over reference positions, in
    the coarse level's windows: `[B, 2h, 2w, K_f]` -> `[B, h, w, K_c]` (rows sum to 1/4 — the
    original pools with means over both)."""
    batch, height, width, _ = fine.shape
    side = 2 * fine_radius + 1
    fine = fine.reshape(batch, height, width, side, side)
    # Offsets 2d + b - a (a: target sub-position, b: reference sub-position) span +-(2R_c + 1);
    # with R_f <= 2R_c (checked by Config) every non-zero pooled entry lies in a coarse window.
    count = 2 * coarse_radius + 1
    pad = count - fine_radius
    fine = F.pad(fine, (pad, pad, pad, pad))
    pooled = 0
    for ay in (0, 1):
        for ax in (0, 1):
            for by in (0, 1):
                for bx in (0, 1):
                    start_y, start_x = by - ay + 1, bx - ax + 1
                    pooled = pooled + fine[:, ay::2, ax::2,
                                           start_y: start_y + 2 * count - 1: 2,
                                           start_x: start_x + 2 * count - 1: 2]
    return (pooled / 16).reshape(batch, height // 2, width // 2, count * count)


def selection_map(raw: torch.Tensor, ratio: float, mode: str) -> torch.Tensor:
    """`[B, h, w]` float 0/1 weights from the raw coarse correlation `[B, h, w, K]`: the
    "entropy" `sum_k -log(softmax_k + 1e-12)` above a threshold at `ratio` (see the module doc)."""
    # Peaked windows saturate at (K - 1) * -log(1e-12), so the map is full of near-ties and the
    # thresholding depends on float rounding: keep the original's [B, K, h, w] layout and its
    # reductions over dim 1 (a last-dim softmax/sum flips hundreds of positions in float32).
    channels_first = raw.permute(0, 3, 1, 2).contiguous()
    entropy = (-torch.log(channels_first.softmax(dim=1) + 1e-12)).sum(1)
    batch, height, width = entropy.shape
    if mode == "original":
        row = int(width * ratio) - 1
        if not 0 <= row < height:
            raise VcorrError(f"selection 'original' reads row {row} of a {height}-row entropy map")
        ranked = entropy.sort(dim=-1, descending=True).values
        return (entropy > ranked[:, row: row + 1]).float()
    if mode == "flattened":
        flat = entropy.flatten(1)
        rank = int(flat.shape[1] * ratio) - 1
        threshold = flat.sort(dim=-1, descending=True).values[:, rank: rank + 1]
        return (flat > threshold).float().reshape(batch, height, width)
    raise VcorrError(f"selection {mode!r} is not one of {', '.join(SELECTIONS)}")


def _check_pyramid(tar: list[torch.Tensor], ref: list[torch.Tensor], lab: torch.Tensor) -> None:
    if len(tar) != 3 or len(ref) != 3:
        raise VcorrError(f"loss_terms needs 3 feature levels (2 local + global), got {len(tar)} and {len(ref)}")
    for level, (t, r) in enumerate(zip(tar, ref)):
        if t.shape != r.shape:
            raise VcorrError(f"level {level}: target {tuple(t.shape)} and reference {tuple(r.shape)} differ")
    (h0, w0), (h1, w1) = tar[0].shape[-2:], tar[1].shape[-2:]
    if (h0, w0) != (2 * h1, 2 * w1):
        raise VcorrError(f"level 0 ({h0}x{w0}) must be twice level 1 ({h1}x{w1})")
    for level in (0, 1):
        h, w = tar[level].shape[-2:]
        if lab.shape[-2] % h or lab.shape[-1] % w or lab.shape[-2] // h != lab.shape[-1] // w:
            raise VcorrError(f"level {level}: a {h}x{w} feature map is no integer stride of the "
                             f"{lab.shape[-2]}x{lab.shape[-1]} clip")


def loss_terms(tar: list[torch.Tensor], ref: list[torch.Tensor], teacher_tar: torch.Tensor | None,
               teacher_ref: torch.Tensor | None, lab_ref: torch.Tensor, lab_tar: torch.Tensor, dropped: int,
               config: Config | None = None) -> dict[str, torch.Tensor]:
    """Spa-then-Temp's weighted stage-two loss terms.

    `tar`, `ref`: student features `[B, C_l, h_l, w_l]` of the target and reference frames at
    levels 0, 1 (local, strides 4 and 8 at the defaults) and 2 (global, layer4). `teacher_tar`,
    `teacher_ref`: the teacher's layer4 `[B, C_t, h_2, w_2]` (None: no global term).
    `lab_ref`, `lab_tar`: the normalised Lab frames `[B, 3, H, W]` before the dropout;
    `dropped` (1 or 2): the Lab channel the dropout zeroed, the reconstruction target.
    Returns `stage0_l1_loss`, `stage1_l1_loss`, `local_corrdis_loss`, `global_corrdis_loss`.
    """
    cfg = config or Config()
    _check_pyramid(tar, ref, lab_tar)
    if dropped not in DROPPABLE:
        raise VcorrError(f"dropped: the reconstructed Lab channel must be 1 or 2, got {dropped}")
    losses: dict[str, torch.Tensor] = {}
    affinities = []
    target_channel = lab_tar[:, dropped: dropped + 1]
    for level, weight in enumerate((cfg.weight_stage0, cfg.weight_stage1)):
        radius = cfg.radius[level]
        # The selection map reads level 1's raw correlation.
        affinity, raw = local_affinity(tar[level], ref[level], radius, keep_raw=level == 1)
        stride = lab_ref.shape[-1] // tar[level].shape[-1]
        reference = lab_ref[:, dropped: dropped + 1, ::stride, ::stride]
        reconstruction = window_apply(affinity, reference, radius)
        upsampled = F.interpolate(reconstruction, size=lab_tar.shape[-2:], mode="bilinear", align_corners=False)
        scale = cfg.reconstruction_weight
        losses[f"stage{level}_l1_loss"] = weight * F.smooth_l1_loss(upsampled * scale, target_channel * scale)
        affinities.append(affinity)

    with torch.no_grad():
        selected = selection_map(raw, cfg.selection_ratio, cfg.selection)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.detach_target):
        pooled = pooled_affinity(affinities[0], cfg.radius[0], cfg.radius[1])
    squared = (affinities[1] - pooled).pow(2).sum(-1)
    # mmcv's masked mean: the weight of a target row is repeated over all h*w reference columns.
    references = tar[1].shape[-2] * tar[1].shape[-1]
    losses["local_corrdis_loss"] = cfg.weight_local * (selected * squared).sum() / (selected.sum() * references + 1e-12)

    if teacher_tar is not None:
        student = global_affinity(tar[2], ref[2], 1.0 / math.sqrt(tar[2].shape[1]))
        with torch.no_grad():
            teacher = global_affinity(teacher_tar, teacher_ref, 1.0 / cfg.teacher_temperature)
        losses["global_corrdis_loss"] = cfg.weight_global * F.mse_loss(student, teacher)
    return losses


def global_affinity(tar: torch.Tensor, ref: torch.Tensor, scale: float) -> torch.Tensor:
    """`softmax_j(scale * <tar(i), ref(j)>)` over all positions: `[B, hw, hw]`."""
    return torch.einsum("bci,bcj->bij", tar.flatten(2), ref.flatten(2)).mul(scale).softmax(dim=-1)


# --------------------------------------------------------------------------------------------
# Model.

class SpaThenTemp(nn.Module):
    """Student + frozen teacher; `forward(rgb, lab)` on `[B, 2, 3, H, W]` clips (reference,
    target) returns the weighted loss terms of `loss_terms`."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.backbone = student_backbone(cfg)
        self.backbone_t = teacher_backbone(cfg)
        if cfg.student_weights:
            self.backbone.load_stage_one(cfg.student_weights, cfg.student_format)
        if cfg.teacher_weights:
            self.backbone_t.load_stage_one(cfg.teacher_weights, cfg.teacher_format)
        else:
            log.warning("no teacher_weights: the global distillation uses a randomly initialised teacher")
        for parameter in self.backbone_t.parameters():
            parameter.requires_grad_(False)
        self.backbone_t.eval()
        self.dropout_generator = torch.Generator().manual_seed(distributed.rank_seed(cfg.seed))

    def train(self, mode: bool = True) -> SpaThenTemp:
        super().train(mode)
        self.backbone_t.eval()
        return self

    def train_state(self) -> dict[str, Any]:
        return {"dropout_generator": self.dropout_generator.get_state()}

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.dropout_generator.set_state(state["dropout_generator"])

    def draw_dropped_channel(self) -> int:
        return DROPPABLE[int(torch.randint(len(DROPPABLE), (1,), generator=self.dropout_generator))]

    def forward(self, rgb: torch.Tensor, lab: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, frames = lab.shape[:2]
        if frames != 2 or rgb.shape != lab.shape:
            raise VcorrError(f"Spa-then-Temp trains on (reference, target) pairs: got RGB {tuple(rgb.shape)}, "
                             f"Lab {tuple(lab.shape)}")
        dropped = self.draw_dropped_channel()
        student_input = lab.clone()
        student_input[:, :, dropped] = 0
        student_input = student_input * DROPOUT_SCALE
        features = self.backbone(student_input.flatten(0, 1))
        features = [f.reshape(batch, frames, *f.shape[1:]) for f in features]
        with torch.no_grad():
            teacher = self.backbone_t(rgb.flatten(0, 1))[0]
            teacher = teacher.reshape(batch, frames, *teacher.shape[1:])
        return loss_terms([f[:, 1] for f in features], [f[:, 0] for f in features], teacher[:, 1], teacher[:, 0],
                          lab[:, 0], lab[:, 1], dropped, self.cfg)


def build_model(cfg: Config, total_steps: int) -> SpaThenTemp:
    return SpaThenTemp(cfg)


def training_step(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, float]]:
    rgb, lab = batch
    terms = model(rgb, lab)
    loss = sum(terms.values())
    return loss, {name: float(value.detach()) for name, value in terms.items()}


def lr_factor(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """mmcv CosineAnnealing (by iteration, min_lr_ratio) times the linear warm-up factor."""
    total = cfg.epochs * steps_per_epoch
    cosine = cfg.min_lr_ratio + 0.5 * (1 - cfg.min_lr_ratio) * (math.cos(math.pi * step / total) + 1)
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return cosine * (1 - (1 - step / warmup) * (1 - cfg.warmup_ratio))
    return cosine


def build_optimizer(cfg: Config, model: nn.Module, steps_per_epoch: int):
    student = (model.module if hasattr(model, "module") else model).backbone
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch))
    return optimizer, scheduler


def export(model: nn.Module, cfg: Config, meta: dict) -> dict[str, Any]:
    student = (model.module if hasattr(model, "module") else model).backbone
    state = cpu_state_dict(student, "backbone.")
    return {"meta": dict(meta), "state_dict": state}


# --------------------------------------------------------------------------------------------
# Data.

def clip_crop_box(width: int, height: int, generator: torch.Generator, area: tuple[float, float],
                  aspect: tuple[float, float], tries: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of Spa-then-Temp's RandomResizedCrop: `tries` candidates of
    area fraction U(area) and aspect w/h log-uniform in `aspect`; the first that fits, at a uniform
    offset; else the centred square of the short side."""
    draws = torch.rand(2, tries, generator=generator, dtype=torch.float64).numpy()
    ratios = np.exp(np.log(aspect[0]) + (np.log(aspect[1]) - np.log(aspect[0])) * draws[0])
    areas = (area[0] + (area[1] - area[0]) * draws[1]) * width * height
    crop_w = np.round(np.sqrt(areas * ratios)).astype(np.int64)
    crop_h = np.round(np.sqrt(areas / ratios)).astype(np.int64)
    for w, h in zip(crop_w.tolist(), crop_h.tolist()):
        if h <= height and w <= width:
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


class ClipPairs(Dataset):
    """Items `(rgb, lab)`, each `[2, 3, S, S]` (reference frame, then target): two consecutive
    index rows of one sequence, cropped, resized and flipped alike; RGB ImageNet-normalised, Lab
    normalised as Spa-then-Temp's pipeline does. One item per sequence with at least two frames."""

    def __init__(self, index: pd.DataFrame, *, size: int, seed: int, epoch: int, area: tuple[float, float],
                 aspect: tuple[float, float], tries: int, flip: float):
        self.videos = [list(rows.image) for _, rows in index.groupby("sequence", sort=False) if len(rows) >= 2]
        if not self.videos:
            raise VcorrError("the index has no sequence with two or more frames")
        self.size, self.seed, self.epoch = size, seed, epoch
        self.area, self.aspect, self.tries, self.flip = area, aspect, tries, flip

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = sample_generator(self.seed, self.epoch, item)
        frames = self.videos[item]
        offset = int(torch.randint(0, len(frames) - 1, (1,), generator=generator))
        images = [np.asarray(load_rgb(path)) for path in frames[offset: offset + 2]]
        height, width = images[0].shape[:2]
        left, top, right, bottom = clip_crop_box(width, height, generator, self.area, self.aspect, self.tries)
        flip = bool(torch.rand(1, generator=generator, dtype=torch.float64) < self.flip)
        clip = []
        for image in images:
            crop = cv2.resize(np.ascontiguousarray(image[top:bottom, left:right]), (self.size, self.size),
                              interpolation=cv2.INTER_LINEAR)
            clip.append(crop[:, ::-1] if flip else crop)
        clip = np.ascontiguousarray(np.stack(clip))
        return normalise_frames(clip, "imagenet_rgb"), normalise_frames(clip, "lab")


def build_dataset(cfg: Config, index: pd.DataFrame, *, epoch_seed: int) -> ClipPairs:
    check_images(index, "training index")
    if "sequence" not in index.columns:
        raise VcorrError("training index: no 'sequence' column (not an index from `vcorr data index`)")
    return ClipPairs(index, size=cfg.image_size, seed=cfg.seed, epoch=epoch_seed, area=cfg.crop_area,
                     aspect=cfg.crop_aspect, tries=cfg.crop_tries, flip=cfg.flip)
