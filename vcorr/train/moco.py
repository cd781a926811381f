"""MoCo v1 / v2 (He et al. 2020; Chen et al. 2020): stage-one pretraining as a `vcorr train` method.

Reproduces facebookresearch/moco (`moco/builder.py`, `moco/loader.py`, `main_moco.py`):

- `MoCo`: a query encoder and a momentum key encoder (torchvision ResNets whose `fc` is the
  projection: linear `dim` for v1, `Linear(d, d) -> ReLU -> Linear(d, dim)` for v2), a queue of
  `queue_size` L2-normalised keys (`queue` [dim, K], `queue_ptr`). One forward, in MoCo's order:
  query features; momentum update of the key encoder's *parameters* (BN buffers are the key
  encoder's own); batch shuffle of the key images across ranks, key features, unshuffle; logits
  `[q.k+, q.queue] / T` with label 0; enqueue the keys gathered from all ranks.
- BatchNorm: MoCo's shuffle BN by default (`shuffle_bn: true`). The alternative is the loop's
  `sync_bn: true` (SyncBatchNorm in both encoders, as SimCLR / MoCo v3; CUDA only) with
  `shuffle_bn: false`; the two together are refused (shuffling under global statistics is moot).
- Augmentation: v1 (InstDisc's) and v2 (`aug+`, SimCLR-like): the crop of `vcorr.train.data`
  (RandomResizedCrop's distribution) then torchvision's own transforms run on RNGs seeded from a
  per-sample generator of (seed, epoch, index), so the data depend on neither worker count nor
  resume.
- Schedule: SGD(momentum 0.9, wd 1e-4) on all parameters; MoCo sets the lr at the start of each
  epoch (step x0.1 at epochs 120 and 160 for v1, half-cosine over `epochs` for v2); here a
  per-iteration LambdaLR holds that epoch's value for every iteration of the epoch. The lr is
  `lr * batch_size / lr_batch` (0.03 at the original's 256; linear scaling as MoCo's README
  recommends for other batch sizes).
- `export`: MoCo's checkpoint layout `{'epoch', 'arch', 'state_dict': {'module.encoder_q.*',
  'module.encoder_k.*', 'module.queue', 'module.queue_ptr'}}` (`vcorr.models.weights`
  format `moco` reads it).

Presets: `config/train/moco_v1.yaml` (the `Config` defaults, = main_moco.py's) and
`config/train/moco_v2.yaml` (`--mlp --moco-t 0.2 --aug-plus --cos`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn
from torchvision import models as tv_models
from torchvision import transforms as T

from vcorr.errors import VcorrError
from vcorr.models.preprocess import IMAGENET_MEAN, IMAGENET_STD
from vcorr.models.weights import cpu_state_dict
from vcorr.train import distributed
from vcorr.train.config import TrainConfig
from vcorr.train.data import Transform, TwoViewImages, seeded

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
AUGMENTATIONS = ("v1", "v2")
LR_SCHEDULES = ("step", "cosine")


@dataclass
class Config(TrainConfig):
    """MoCo v1 defaults (main_moco.py's argparse defaults); v2 = mlp, temperature 0.2, aug v2, cosine."""

    method: str = "moco"
    arch: str = "resnet50"  # -a
    epochs: int = 200  # --epochs
    batch_size: int = 256  # -b: global batch over all GPUs
    image_size: int = 224  # RandomResizedCrop(224)
    dim: int = 128  # --moco-dim
    queue_size: int = 65536  # --moco-k
    key_momentum: float = 0.999  # --moco-m
    temperature: float = 0.07  # --moco-t
    mlp: bool = False  # --mlp (v2)
    augmentation: str = "v1"  # "v2" = --aug-plus
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop(scale=(0.2, 1.0)), both versions
    lr: float = 0.03  # --lr, for a global batch of `lr_batch`
    lr_batch: int = 256  # the batch `lr` is given for; lr scales linearly with batch_size / lr_batch
    lr_schedule: str = "step"  # "cosine" = --cos (v2)
    lr_milestones: tuple[int, ...] = (120, 160)  # --schedule: lr x0.1 from each of these epochs
    sgd_momentum: float = 0.9  # --momentum
    weight_decay: float = 1e-4  # --wd
    shuffle_bn: bool = True  # MoCo's batch shuffle of the key images across ranks
    drop_last: bool = True  # main_moco.py's DataLoader(drop_last=True): the queue takes whole batches only

    BOUNDS: ClassVar[dict[str, str]] = {
        "dim": ">= 1", "queue_size": ">= 1", "lr_batch": ">= 1", "temperature": "> 0", "key_momentum": "in [0, 1]",
        "sgd_momentum": ">= 0",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {"arch": ARCHS, "augmentation": AUGMENTATIONS, "lr_schedule": LR_SCHEDULES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise VcorrError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.queue_size % self.batch_size:
            # MoCo asserts K % batch == 0 so a whole batch of keys always fits before the wrap.
            raise VcorrError(f"queue_size: {self.queue_size} is not a multiple of batch_size {self.batch_size}")
        if not self.drop_last:
            raise VcorrError("drop_last: MoCo's queue takes whole batches only (main_moco.py drops an epoch's "
                             "last partial batch): drop_last must be true")
        if self.shuffle_bn and self.sync_bn:
            raise VcorrError("shuffle_bn and sync_bn are alternatives: set shuffle_bn: false to use sync_bn")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise VcorrError(f"crop_scale: {self.crop_scale} is not 0 < min <= max <= 1")


# --------------------------------------------------------------------------------------------
# Model


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and queue; `forward(im_q, im_k) -> (logits, labels)`.

    `state_dict()` holds exactly `encoder_q.*`, `encoder_k.*`, `queue`, `queue_ptr`, as MoCo's.
    """

    def __init__(self, arch: str = "resnet50", dim: int = 128, queue_size: int = 65536,
                 key_momentum: float = 0.999, temperature: float = 0.07, mlp: bool = False,
                 shuffle_bn: bool = True) -> None:
        super().__init__()
        self.queue_size = queue_size
        self.key_momentum = key_momentum
        self.temperature = temperature
        self.shuffle_bn = shuffle_bn
        # Built in MoCo's order (both encoders, then both MLP heads, then the queue), so a seeded
        # construction draws the same initial weights as the original.
        self.encoder_q = tv_models.__dict__[arch](num_classes=dim)
        self.encoder_k = tv_models.__dict__[arch](num_classes=dim)
        if mlp:
            for encoder in (self.encoder_q, self.encoder_k):
                hidden = encoder.fc.weight.shape[1]
                encoder.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), encoder.fc)
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)
            param_k.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- m key + (1 - m) query, parameters only (BN running stats stay the key encoder's)."""
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.copy_(param_k * self.key_momentum + param_q.detach() * (1.0 - self.key_momentum))

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys of all ranks over the oldest queue entries (columns ptr..ptr+N)."""
        keys = distributed.all_gather_cat(keys)
        count = keys.shape[0]
        ptr = int(self.queue_ptr)
        if self.queue_size % count:
            # MoCo asserts this, so a batch of keys never wraps around the queue's end.
            raise VcorrError(f"MoCo queue: size {self.queue_size} is not a multiple of the global batch {count}")
        self.queue[:, ptr:ptr + count] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + count) % self.queue_size

    @torch.no_grad()
    def shuffled_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Key features with shuffle BN: this rank encodes a random slice of the global batch, and
        the features are returned to their images' ranks and positions."""
        images = distributed.all_gather_cat(im_k)
        world, rank = distributed.world_size(), distributed.rank()
        # Drawn from the global CPU RNG (saved with every checkpoint) as MoCo does; rank 0's wins.
        permutation = distributed.broadcast(torch.randperm(images.shape[0]).to(im_k.device), src=0)
        mine = permutation.view(world, -1)[rank]
        keys = F.normalize(self.encoder_k(images[mine]), dim=1)
        restore = torch.argsort(permutation).view(world, -1)[rank]
        return distributed.all_gather_cat(keys)[restore]

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self.momentum_update()
            if self.shuffle_bn:
                k = self.shuffled_keys(im_k)
            else:
                k = F.normalize(self.encoder_k(im_k), dim=1)
        logits = contrastive_logits(q, k, self.queue.clone().detach(), self.temperature)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self.dequeue_and_enqueue(k)
        return logits, labels


def contrastive_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """`[N, 1 + K]`: q.k (the positive, column 0) then q against every queue column, over T.

    As einsums (MoCo's reductions): the float rounding, hence the training run, matches MoCo's bit
    for bit on the CPU."""
    positive = torch.einsum("nc,nc->n", q, k)[:, None]
    negative = torch.einsum("nc,ck->nk", q, queue.to(q.dtype))
    return torch.cat([positive, negative], dim=1) / temperature


def build_model(cfg: Config, total_steps: int) -> MoCo:
    return MoCo(cfg.arch, cfg.dim, cfg.queue_size, cfg.key_momentum, cfg.temperature, cfg.mlp, cfg.shuffle_bn)


# --------------------------------------------------------------------------------------------
# Data: torchvision's augmentations, run on an RNG forked per sample


class GaussianBlur:
    """MoCo v2's blur (from SimCLR): PIL's Gaussian filter, radius = sigma ~ U[0.1, 2.0] (python RNG)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def view_transform(version: str) -> Transform:
    """MoCo's training transform after RandomResizedCrop (which `TwoViewImages` draws), for one view.

    torchvision's transforms draw from the global RNGs; `seeded` runs them on RNGs seeded from the
    item's generator, so each view is a function of (seed, epoch, index) alone.
    """
    if version == "v1":
        # InstDisc's: grayscale before an always-on ColorJitter(0.4, 0.4, 0.4, 0.4).
        steps = [T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4)]
    elif version == "v2":
        steps = [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                 T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5)]
    else:
        raise VcorrError(f"augmentation: {version!r} is not one of {', '.join(AUGMENTATIONS)}")
    steps += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return seeded(T.Compose(steps))


def build_dataset(cfg: Config, index: pd.DataFrame, *, epoch_seed: int) -> TwoViewImages:
    """Items `(query view, key view, box, box)` (the boxes are unused), as MoCo's TwoCropsTransform."""
    return TwoViewImages(index, size=cfg.image_size, seed=cfg.seed, epoch=epoch_seed, scale=cfg.crop_scale,
                         transform=view_transform(cfg.augmentation))


# --------------------------------------------------------------------------------------------
# Optimisation, step, export


def lr_factor(cfg: Config, epoch: int) -> float:
    """MoCo's adjust_learning_rate for `epoch`, as a factor of the base lr."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return 0.1 ** sum(epoch >= milestone for milestone in cfg.lr_milestones)


def build_optimizer(cfg: Config, model: nn.Module, steps_per_epoch: int):
    lr = cfg.lr * cfg.batch_size / cfg.lr_batch
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
    if steps_per_epoch < 1:
        raise VcorrError(f"MoCo schedule: {steps_per_epoch} steps per epoch (fewer images than one batch?)")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step // steps_per_epoch))
    return optimizer, scheduler


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose label is among the k largest logits (MoCo's acc@k)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean()) * 100.0


def training_step(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, float]]:
    im_q, im_k = batch[0], batch[1]
    logits, labels = model(im_q, im_k)
    loss = F.cross_entropy(logits.float(), labels)
    with torch.no_grad():
        terms = {"loss": float(loss.detach()), "acc1": topk_accuracy(logits, labels, 1),
                 "acc5": topk_accuracy(logits, labels, 5)}
    return loss, terms


def export(model: nn.Module, cfg: Config, meta: dict) -> dict[str, Any]:
    """MoCo's checkpoint: the `module.`-prefixed state dict (as saved from DDP), `epoch` (epochs
    trained, as MoCo's `epoch + 1`), `arch`; the loop's provenance under `vcorr`."""
    model = getattr(model, "module", model)
    state = cpu_state_dict(model, "module.")
    return {"epoch": int(meta.get("epoch", meta.get("epochs", cfg.epochs))), "arch": cfg.arch,
            "state_dict": state, "vcorr": dict(meta)}
