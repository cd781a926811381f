"""VIP human part propagation: mIoU over 20 classes from one confusion matrix of all frames."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from vcorr.errors import VcorrError

N_CLASSES = 20  # background + 19 parts


def resize_nearest(ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an id map to `shape` (OpenCV's INTER_NEAREST)."""
    if ids.shape == shape:
        return ids
    import cv2

    return cv2.resize(ids, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """`hist[g, p]` pixel counts over pixels with 0 <= g < n_classes (255 and others ignored)."""
    counted = gt < n_classes
    pairs = gt[counted].astype(np.int64) * n_classes + pred[counted]
    return np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def class_iou(hist: np.ndarray) -> np.ndarray:
    """IoU per class: hist[c, c] / (row c + column c - hist[c, c]); NaN for a class never seen."""
    hits = np.diag(hist).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return hits / (hist.sum(axis=1) + hist.sum(axis=0) - hits)


def miou(frames: Iterable[tuple[str, np.ndarray, np.ndarray]], n_classes: int = N_CLASSES) -> dict:
    """mIoU and per-class IoU, in percent, over (name, gt ids, predicted ids) frames.

    Predictions are resized to the annotation size with nearest neighbour before counting.
    """
    hist = np.zeros((n_classes, n_classes), dtype=np.int64)
    n_frames = 0
    for name, gt, pred in frames:
        pred = resize_nearest(pred, gt.shape)
        highest = int(pred.max())
        if highest >= n_classes:
            raise VcorrError(f"{name}: predicted class id {highest}; VIP has ids 0..{n_classes - 1}")
        hist += confusion_matrix(gt, pred, n_classes)
        n_frames += 1
    if n_frames == 0:
        raise VcorrError("no frames to score")
    iou = 100.0 * class_iou(hist)
    return {
        "mIoU": float(np.nanmean(iou)),
        "per_class_IoU": [None if np.isnan(value) else float(value) for value in iou],
        "frames": n_frames,
        "confusion_matrix": hist.tolist(),
    }
