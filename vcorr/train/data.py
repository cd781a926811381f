"""Training data over `vcorr data index` CSVs: two-view crops of images (HVC, MoCo), the HVC video
variant (both views of one frame, a bounded number of frames per video each epoch), and a
sampler that resumes mid-epoch and splits an epoch over DDP ranks.

Every random choice of an item comes from a generator seeded by (seed, epoch, item index), so
the data of a step depends neither on the number of worker processes nor on where a run was
interrupted and resumed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from vcorr.errors import VcorrError

# A transform turns a cropped RGB image into the tensor the model sees; it receives the item's
# generator so that its own random choices are reproducible too.
Transform = Callable[[Image.Image, torch.Generator], torch.Tensor]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item of one epoch (SeedSequence mixes the three well)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index))


def load_rgb(path: str | Path) -> Image.Image:
    """An image file decoded to RGB with PIL; a missing or undecodable file names the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise VcorrError(f"{path}: image missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise VcorrError(f"{path}: unreadable image ({error})") from None


def to_tensor(image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
    """`[3, H, W]` float in [0, 1] (torchvision's ToTensor); the default transform."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def normalize(mean: tuple[float, float, float], std: tuple[float, float, float]) -> Transform:
    """`to_tensor` then per-channel (x - mean) / std."""
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)

    def transform(image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return (to_tensor(image) - mean_t) / std_t

    return transform


def seeded(transform: Callable[[Image.Image], torch.Tensor]) -> Transform:
    """A one-argument transform drawing from the global torch / python RNGs (torchvision
    augmentations, MoCo's blur) run on RNG states seeded from the item's generator; the global
    states are restored afterwards."""

    def wrapped(image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return transform(image)
            finally:
                random.setstate(python_state)

    return wrapped


class RandomResizedCropBox:
    """RandomResizedCrop that also returns the crop box normalised to the source image.

    A box of area fraction U(scale) and aspect ratio w/h log-uniform in `ratio` is tried `tries`
    times; if none fits, the largest centred box with a ratio inside `ratio`. The crop is resized
    to `size` x `size` with bilinear filtering (PIL). The box is
    `[x1/(W-1), y1/(H-1), (x1+w-1)/(W-1), (y1+h-1)/(H-1)]` (HVC's normalisation).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10):
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.tries = tries

    def box(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """(left, top, w, h) of one crop of a `width` x `height` image."""
        area = width * height
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(self.tries):
            draws = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * draws[0])
            aspect = math.exp(log_low + (log_high - log_low) * draws[1])
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return left, top, w, h
        image_ratio = width / height
        if image_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif image_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, image: Image.Image, generator: torch.Generator) -> tuple[Image.Image, torch.Tensor]:
        width, height = image.size
        left, top, w, h = self.box(width, height, generator)
        # Crop, then resize (torchvision's resized_crop on PIL): the filter never reads outside the box.
        crop = image.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)
        return crop, normalised_box(left, top, w, h, width, height)


def normalised_box(left: int, top: int, w: int, h: int, width: int, height: int) -> torch.Tensor:
    # A 1-pixel-wide image has no extent to normalise by; its box is 0 along that axis.
    x_scale, y_scale = max(width - 1, 1), max(height - 1, 1)
    return torch.tensor([left / x_scale, top / y_scale, (left + w - 1) / x_scale, (top + h - 1) / y_scale],
                        dtype=torch.float32)


def check_images(index: pd.DataFrame, source: str | Path) -> None:
    """Refuse an index with no rows or naming image files that do not exist (before training)."""
    if "image" not in index.columns:
        raise VcorrError(f"{source}: no 'image' column (not an index from `vcorr data index`)")
    if len(index) == 0:
        raise VcorrError(f"{source}: the index lists no images")
    missing = [path for path in index.image if not Path(path).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise VcorrError(f"{source}: image {missing[0]} missing{more}")


def frames_per_video(index: pd.DataFrame, limit: int, seed: int, epoch: int) -> pd.DataFrame:
    """At most `limit` frames of each sequence, drawn afresh each epoch (HVC's video variant),
    in index order. The number of rows is the same every epoch."""
    generator = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    keep = []
    for _, rows in index.groupby("sequence", sort=False):
        positions = rows.index.to_numpy()
        if len(positions) > limit:
            positions = np.sort(generator.choice(positions, size=limit, replace=False))
        keep.append(positions)
    return index.loc[np.concatenate(keep)].reset_index(drop=True)


class TwoViewImages(Dataset):
    """Items `(view_1, view_2, box_1, box_2)`: two independent random crops of one image.

    `index`: rows of a `vcorr data index` table (column `image`). `epoch` and `seed` seed the
    per-item generator. `transform` maps each cropped PIL image to a tensor (default `to_tensor`).
    """

    def __init__(self, index: pd.DataFrame, *, size: int, seed: int, epoch: int,
                 scale: tuple[float, float] = (0.0, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 tries: int = 10, transform: Transform | None = None):
        self.images = list(index.image)
        self.crop = RandomResizedCropBox(size, scale, ratio, tries)
        self.transform = transform or to_tensor
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        generator = sample_generator(self.seed, self.epoch, item)
        image = load_rgb(self.images[item])
        crop_1, box_1 = self.crop(image, generator)
        crop_2, box_2 = self.crop(image, generator)
        return self.transform(crop_1, generator), self.transform(crop_2, generator), box_1, box_2


class ResumableSampler(Sampler[int]):
    """DistributedSampler semantics (a permutation seeded by seed + epoch when shuffling, padded
    by repetition to a multiple of the world size, rank r taking every world-th index from r),
    plus a start position: `set_epoch(epoch, skip_batches=k)` drops this rank's first k batches
    of `batch_size`, so a resumed epoch continues with exactly the batches it had not seen."""

    def __init__(self, length: int, *, batch_size: int, shuffle: bool, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.length = length
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip_batches = 0
        self.per_rank = math.ceil(length / world_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip_batches = skip_batches

    def batches_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def _rank_indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        padding = self.per_rank * self.world_size - self.length
        order += (order * math.ceil(padding / max(len(order), 1)))[:padding]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._rank_indices()[self.skip_batches * self.batch_size:])

    def __len__(self) -> int:
        return max(self.per_rank - self.skip_batches * self.batch_size, 0)
