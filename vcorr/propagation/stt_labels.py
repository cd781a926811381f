"""Spa-then-Temp's first-frame label path (protocol "stt"), as its test pipeline computes it.

Spa-then-Temp's test datasets (`VOS_davis_dataset_test`, `vip_dataset_rgb`,
`jhmdb_dataset_rgb`) hand the first frame's labels to the pipeline as `ref_seg_map` at the frame
size: DAVIS / VIP the first annotation PNG as read (palette indices, **no id remapping**: VIP's
void 255, if present, is a label like any other), JHMDB float64 `[H, W, 15]` Gaussian heat maps
drawn at the frame size. Its `Resize` transform (vcl/datasets/pipelines/augmentation.py) resizes
the frames and `ref_seg_map` together to the network's input size:

- uint8 id maps: mmcv `imresize(..., interpolation='nearest', backend='pillow')` (PIL NEAREST);
- float heat maps: mmcv `imresize(..., interpolation='bilinear', backend='cv2')` (OpenCV
  INTER_LINEAR on the `[H, W, J]` array, float64 kept), then transposed to `[J, h, w]`.

`VanillaTracker.forward_test` then takes the labels from the input size to the feature grid (id
maps: PIL nearest, then one-hot over max + 1 ids; heat maps: bilinear, align_corners=False, then
float32; `STTPropagator` does this step) and writes frame 0 as the input-size labels resized back
to the original frame size (ids: torch `nearest`; heat maps: bilinear, align_corners=False; JHMDB
coordinates are then read from those maps like every other frame's). Later frames are read out
from the feature grid directly at the original size.

So wherever the input is resized (DAVIS frames not 480 high, JHMDB 320x320, VIP 560x560), the
labels go through two resizes and frame 0's output is a round trip, not the annotation. When the
input size equals the frame size every step here is the identity.

The crw protocol (HVC / videowalk) keeps its own label path: labels at the frame size, bilinear
(align_corners=True) to the grid, frame 0 = its downsampled-then-upsampled labels
(`CRWPropagator`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vcorr.errors import VcorrError

__all__ = ["STTFirstFrame", "first_frame_output", "labels_at_input_size", "stt_first_frame"]


def labels_at_input_size(labels, input_size: tuple[int, int]) -> np.ndarray:
    """First-frame labels at the network's input size `(h, w)`, as Spa-then-Temp's `Resize`.

    `labels`: an `[H, W]` uint8 id map -> `[h, w]` uint8 (PIL nearest); or `[J, H, W]` float heat
    maps -> `[J, h, w]` float64 (OpenCV bilinear on `[H, W, J]`)."""
    labels = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    height, width = (int(v) for v in input_size)
    if labels.ndim == 2:
        if labels.dtype != np.uint8:
            if labels.size and (labels.min() < 0 or labels.max() > 255):
                raise VcorrError("Spa-then-Temp label path: id maps must hold ids 0..255")
            labels = labels.astype(np.uint8)
        return np.array(Image.fromarray(labels).resize((width, height), Image.NEAREST))
    if labels.ndim == 3:
        channels_last = np.ascontiguousarray(labels.transpose(1, 2, 0), dtype=np.float64)
        resized = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
        if resized.ndim == 2:  # OpenCV drops a single channel
            resized = resized[..., None]
        return np.ascontiguousarray(resized.transpose(2, 0, 1))
    raise VcorrError(f"Spa-then-Temp label path: expected [H, W] ids or [J, H, W] heat maps, got {labels.shape}")


def first_frame_output(labels, output_size: tuple[int, int]) -> torch.Tensor:
    """Frame 0's output as `forward_test` writes it: the input-size labels resized to the original
    frame size `(H, W)`. Id maps -> `[H, W]` uint8 (torch `nearest`); heat maps -> `[J, H, W]`
    (bilinear, align_corners=False, in the maps' own float precision)."""
    tensor = labels if torch.is_tensor(labels) else torch.from_numpy(np.asarray(labels))
    size = tuple(int(v) for v in output_size)
    if tensor.ndim == 2:
        up = F.interpolate(tensor[None, None].float(), size=size, mode="nearest")[0, 0]
        return up.to(torch.uint8)
    if tensor.ndim == 3:
        if not tensor.is_floating_point():
            tensor = tensor.float()
        return F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]
    raise VcorrError(f"Spa-then-Temp label path: expected [H, W] ids or [J, H, W] heat maps, got {tuple(tensor.shape)}")


@dataclass
class STTFirstFrame:
    """One sequence's first frame through Spa-then-Temp's label path."""

    labels: np.ndarray  # at the network's input size: what the propagator is given
    output: torch.Tensor  # frame 0's output at the original frame size (ids or heat maps)
    output_size: tuple[int, int]  # the original frame size, `STTPropagator(output_size=...)`


def stt_first_frame(labels, input_size: tuple[int, int], output_size: tuple[int, int]) -> STTFirstFrame:
    """`labels` at the original frame size `output_size` -> the input-size labels the propagator
    starts from, and frame 0's output (`first_frame_output`)."""
    at_input = labels_at_input_size(labels, input_size)
    size = (int(output_size[0]), int(output_size[1]))
    return STTFirstFrame(at_input, first_frame_output(at_input, size), size)
