"""JHMDB keypoint tracking: PCK@alpha as the VFS / Spa-then-Temp evaluation computes it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from vcorr.errors import VcorrError

TOP_K = 5
DEFAULT_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)


def heatmaps_to_coords(heatmaps: np.ndarray, top_k: int = TOP_K) -> np.ndarray:
    """`[T, J, H, W]` heat maps -> `[2, J, T]` (x, y) pixel coordinates, 0-based.

    Each map's `top_k` largest values, renormalised to sum 1, weight their pixel positions; a map
    that sums to exactly 0 gives (-1, -1). The renormalisation stays in the maps' own dtype, as in
    the reference evaluation, so float32 maps give the same numbers.
    """
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 4:
        raise VcorrError(f"heat maps must be [T, joints, H, W], got shape {heatmaps.shape}")
    n_frames, n_joints, height, width = heatmaps.shape
    flat = heatmaps.reshape(n_frames, n_joints, height * width)
    # The default (unstable) argsort picks among ties exactly as the reference evaluation does.
    top_indices = np.argsort(flat, axis=-1)[..., -top_k:]
    top_values = np.take_along_axis(flat, top_indices, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero maps, overwritten below
        top_values = top_values / np.sum(top_values, axis=-1, keepdims=True)
    coords = np.empty((2, n_joints, n_frames), dtype=np.float64)
    coords[0] = np.sum((top_indices % width) * top_values, axis=-1).T
    coords[1] = np.sum((top_indices // width) * top_values, axis=-1).T
    coords[:, flat.sum(axis=-1).T == 0] = -1
    return coords


def joint_distances(pred: np.ndarray, gt: np.ndarray) -> list[np.ndarray]:
    """Per joint, the normalised distances of one clip's visible predictions (`[2, J, T]` each).

    A joint is visible when its predicted x > 0; the per-frame normaliser is 0.6 times the
    diagonal of the box around the visible joints' ground truth.
    """
    visible = pred[0] > 0  # [J, T]
    with np.errstate(invalid="ignore"):
        highest = np.where(visible, gt, -1.0).max(axis=1)  # [2, T]
        lowest = np.where(visible, gt, 1e6).min(axis=1)
    extent = highest - lowest
    box = 0.6 * np.sqrt(extent[0] * extent[0] + extent[1] * extent[1])  # [T]
    offset = pred - gt
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.sqrt(offset[0] * offset[0] + offset[1] * offset[1]) / box[None, :]  # [J, T]
    return [distance[joint, visible[joint]] for joint in range(pred.shape[1])]


def pck(
    pred_coords: Sequence[np.ndarray],
    gt_coords: Sequence[np.ndarray],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> dict[str, float]:
    """PCK@alpha in percent over clips: per joint over all its visible frames, then joint mean.

    `pred_coords[i]` and `gt_coords[i]` are `[2, J, T]` 0-based (x, y) of clip i, same T.
    """
    if len(pred_coords) != len(gt_coords):
        raise VcorrError(f"{len(pred_coords)} predicted clips but {len(gt_coords)} ground-truth clips")
    per_joint: list[list[np.ndarray]] = []
    for clip, (pred, gt) in enumerate(zip(pred_coords, gt_coords)):
        pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
        if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[0] != 2:
            raise VcorrError(f"clip {clip}: predictions {pred.shape} and ground truth {gt.shape} differ")
        if per_joint and len(per_joint) != pred.shape[1]:
            raise VcorrError(f"clip {clip}: {pred.shape[1]} joints, earlier clips have {len(per_joint)}")
        per_joint = per_joint or [[] for _ in range(pred.shape[1])]
        for joint, distances in enumerate(joint_distances(pred, gt)):
            per_joint[joint].append(distances)
    if not per_joint:
        raise VcorrError("no clips to score")
    pooled = [np.concatenate(lists) for lists in per_joint]
    empty = [joint for joint, d in enumerate(pooled) if d.size == 0]
    if empty:
        raise VcorrError(f"joints {empty} are never visible (predicted x > 0): PCK is undefined")
    scores = {}
    for alpha in alphas:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_joint_pck = [100.0 * np.count_nonzero(d <= alpha) / d.size for d in pooled]
        scores[f"PCK@{alpha}"] = float(np.mean(per_joint_pck))
    return scores
