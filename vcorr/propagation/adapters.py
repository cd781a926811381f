"""Task adapters around label propagation: what the first frame's labels are for each benchmark
task, how propagated soft labels become the outputs the scorers read, and the writers.

- VOS (DAVIS, YouTube-VOS): index maps; objects first annotated after frame 0 (YouTube-VOS) are
  passed to the crw protocol as ``late = {t: ids of the new objects}`` (`late_objects`).
- VIP: part maps with 20 classes (background + 19 parts); other ids (void 255) are background.
- JHMDB: 15 joints; frame 0's labels are unnormalised Gaussians (sigma 4 px) at the ground-truth
  joints at the original resolution, one channel per joint, drawn as Spa-then-Temp / VFS draw them
  (a ``6 sigma + 1`` patch anchored at ``int(x - 3 sigma)``); each frame's soft maps are upsampled
  to that resolution and read out as coordinates with `vcorr.metrics.pck.heatmaps_to_coords`.

Everything is per frame, so a sequence streams through without holding its outputs in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from vcorr.errors import VcorrError
from vcorr.io import atomic_file, write_index_png

JHMDB_SIGMA = 4

# How each protocol upsamples soft labels to the label resolution (bilinear).
ALIGN_CORNERS = {"crw": True, "stt": False}


def late_objects(label0: np.ndarray, annotations: Iterable[tuple[int, np.ndarray]]) -> dict[int, np.ndarray]:
    """{t: id map holding only the objects first annotated at frame t (0 elsewhere)}.

    `annotations`: (frame index, id map) of the annotated frames after frame 0, in order."""
    seen = set(np.unique(label0).tolist()) - {0}
    late = {}
    for index, ids in annotations:
        if ids.shape != label0.shape:
            raise VcorrError(f"annotation of frame {index}: size {ids.shape} differs from frame 0's {label0.shape}")
        new = sorted(set(np.unique(ids).tolist()) - {0} - seen)
        if new:
            late[index] = np.where(np.isin(ids, new), ids, 0).astype(np.uint8)
            seen.update(new)
    return late


def vip_labels(ids: np.ndarray) -> np.ndarray:
    """VIP part map for propagation: ids 0..19 kept, anything else (void 255) as background."""
    ids = np.asarray(ids)
    from vcorr.metrics.vip import N_CLASSES

    return np.where(ids < N_CLASSES, ids, 0).astype(np.uint8)


def joint_heatmaps(
    joints: np.ndarray, size: tuple[int, int], sigma: int = JHMDB_SIGMA, dtype=np.float32
) -> np.ndarray:
    """`[J, H, W]` (`dtype`; Spa-then-Temp draws float64) unnormalised Gaussians (peak 1) at the joints `[2, J]` (x, y, 0-based).

    As in Spa-then-Temp / VFS: a ``(6 sigma + 1)`` square patch whose corner is at
    ``int(p - 3 sigma)`` (truncated toward zero), cut at ``int(p + 3 sigma + 1)`` and at the image
    borders; joints whose patch misses the image leave their channel empty."""
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 2 or joints.shape[0] != 2:
        raise VcorrError(f"joint coordinates must be [2, joints], got {joints.shape}")
    height, width = size
    patch_size = 6 * sigma + 1
    offsets = np.arange(patch_size, dtype=np.float64) - patch_size // 2
    patch = np.exp(-(offsets[None, :] ** 2 + offsets[:, None] ** 2) / (2 * sigma**2))
    maps = np.zeros((joints.shape[1], height, width), dtype)
    for joint, (x, y) in enumerate(joints.T):
        left, top = int(x - 3 * sigma), int(y - 3 * sigma)
        right, bottom = int(x + 3 * sigma + 1), int(y + 3 * sigma + 1)
        if left >= width or top >= height or right < 0 or bottom < 0:
            continue
        x0, x1 = max(0, left), min(right, width)
        y0, y1 = max(0, top), min(bottom, height)
        maps[joint, y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return maps


def jhmdb_first_heatmaps(mat_path: str | os.PathLike, size: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """Frame 0's `[15, H, W]` joint heat maps (`dtype`) from a clip's `joint_positions.mat`, at the
    frames' original size `(H, W)` (read with the scorer's reader, `vcorr.data.readers`)."""
    from vcorr.data.readers import read_joint_positions

    return joint_heatmaps(read_joint_positions(mat_path)[..., 0], size, dtype=dtype)


def upsample_soft(soft: torch.Tensor, protocol: str, size: tuple[int, int]) -> torch.Tensor:
    """Soft labels [M, h, w] at the label resolution [M, H, W], as the protocol upsamples them."""
    return torch.nn.functional.interpolate(
        soft[None].float(), size, mode="bilinear", align_corners=ALIGN_CORNERS[protocol]
    )[0]


def keypoint_coords(soft: torch.Tensor, protocol: str, size: tuple[int, int]) -> np.ndarray:
    """One frame's propagated joint maps [15, h, w] -> `[2, 15]` (x, y) pixel coordinates."""
    from vcorr.metrics.pck import heatmaps_to_coords

    heatmaps = upsample_soft(soft, protocol, size).cpu().numpy()
    return heatmaps_to_coords(heatmaps[None])[..., 0]


class IndexPngWriter:
    """Indexed PNGs (DAVIS palette) named after the input frames, in one folder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def write(self, frame: str, ids) -> Path:
        ids = ids.cpu().numpy() if torch.is_tensor(ids) else np.asarray(ids)
        path = self.folder / f"{frame}.png"
        write_index_png(path, ids)
        return path


class KeypointWriter:
    """Collects per-frame `[2, J]` coordinates; `save` writes the clip's `[2, J, T]` array (.npy)."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def add(self, coords: np.ndarray) -> None:
        self.frames.append(np.asarray(coords, dtype=np.float64))

    def save(self, path: str | os.PathLike) -> Path:
        if not self.frames:
            raise VcorrError(f"{path}: no frames to write")
        path = Path(path)
        with atomic_file(path) as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, np.stack(self.frames, axis=-1))
        return path
