"""uint8 RGB frames -> normalised network input, reproducing the seeds' test pipelines (training
uses the same constants):

- `imagenet_rgb` (HVC, videowalk): torchvision `ToTensor` (/255) then `Normalize` with the
  ImageNet mean/std, in float32.
- `dino_rgb` (DINO's `eval_video_segmentation.py`, `read_frame` + `color_normalize`): the frame
  in float32 divided by 255 (numpy), then per channel `sub_(mean)` and `div_(std)` with the
  ImageNet mean and std **(0.228, 0.224, 0.225)** (0.228 for red, not ImageNet's 0.229). Protocol
  `dino` takes it for `imagenet_rgb` methods (vcorr.propagation.parameters.PROTOCOL_INPUTS).
- `lab` (Spa-then-Temp): `cv2.cvtColor(float32(frame) / 255, COLOR_RGB2Lab)` (L in [0, 100]),
  then mmcv's in-place normalisation (OpenCV subtract of the mean, multiply by 1/std), mean
  (50, 0, 0), std (50, 127, 127).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from vcorr.errors import VcorrError
from vcorr.models.config import INPUTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_STD = (0.228, 0.224, 0.225)
LAB_MEAN = (50.0, 0.0, 0.0)
LAB_STD = (50.0, 127.0, 127.0)


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise VcorrError(
            f"frames must be uint8 RGB arrays of shape HxWx3 (or NxHxWx3), got "
            f"{frames.dtype} {tuple(frames.shape)}"
        )


def _rgb_to_normalised_lab(frame: np.ndarray) -> np.ndarray:
    """Spa-then-Temp's RGB2LAB + Normalize pipeline steps on one HxWx3 uint8 RGB frame."""
    lab = cv2.cvtColor(np.float32(frame) / 255.0, cv2.COLOR_RGB2Lab)
    # mmcv.imnormalize_ works in place with OpenCV arithmetic against float64 scalars.
    mean = np.float64(np.array(LAB_MEAN).reshape(1, -1))
    inverse_std = 1.0 / np.float64(np.array(LAB_STD).reshape(1, -1))
    cv2.subtract(lab, mean, lab)
    cv2.multiply(lab, inverse_std, lab)
    return lab


def normalise_frames(frames: np.ndarray, input: str) -> torch.Tensor:
    """uint8 RGB `[N, H, W, 3]` (or `[H, W, 3]`) -> float32 network input `[N, 3, H, W]` (CPU)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    _check_frames(frames)
    if input == "imagenet_rgb":
        images = torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float32).div(255)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        return images.sub(mean).div(std)
    if input == "dino_rgb":
        images = torch.from_numpy(np.float32(frames) / 255.0).permute(0, 3, 1, 2).contiguous()
        for image in images:
            for channel, mean, std in zip(image, IMAGENET_MEAN, DINO_STD):
                channel.sub_(mean).div_(std)
        return images
    if input == "lab":
        lab = np.stack([_rgb_to_normalised_lab(frame) for frame in frames])
        return torch.from_numpy(lab).permute(0, 3, 1, 2).contiguous()
    raise VcorrError(f"unknown input normalisation {input!r}; expected one of {', '.join(INPUTS)}")
