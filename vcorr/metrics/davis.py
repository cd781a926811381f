"""DAVIS semi-supervised J&F, the numbers davis2017-evaluation reports, computed fast.

The definitions (../shared/reference/metrics.md) are the official tool's: Jaccard J per object
and frame, boundary F-measure with Martin et al.'s `seg2bmap` boundaries and a disk dilation of
radius ceil(0.008 * diagonal), and `db_statistics` (mean, recall, decay with the uint8 bin-index
wrap). What differs is only the cost: frames are decoded once as uint8 id maps (never float64
stacks), and each object is measured inside its own bounding box. That is exact: every boundary
pixel of a mask lies in the mask's bounding box grown by one pixel, so a crop of that size holds
both boundary maps completely, and dilating a boundary map inside the crop gives the full-frame
dilation at every pixel of the crop (pixels outside the crop carry no boundary to spread).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcorr.errors import VcorrError
from vcorr.io_png import read_ids

VOID_ID = 255
BOUNDARY_THRESHOLD = 0.008
GLOBAL_MEASURES = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


# --- Definitions -------------------------------------------------------------------------------


def boundary_tolerance(height: int, width: int) -> int:
    """Dilation radius in pixels: ceil(0.008 * image diagonal), 8 at 480x854."""
    return math.ceil(BOUNDARY_THRESHOLD * math.sqrt(height * height + width * width))


@functools.cache
def disk_kernel(radius: int) -> np.ndarray:
    """`skimage.morphology.disk(radius)` as a uint8 kernel: offsets with dx^2 + dy^2 <= radius^2.

    Built here rather than imported because importing skimage.morphology costs over a second;
    the tests check it equals skimage's disk.
    """
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius).astype(np.uint8)


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Martin et al.'s one-pixel boundary map of a binary mask (bool `[H, W]`).

    A pixel is a boundary pixel when it differs from its right, bottom or bottom-right neighbour;
    the last row looks only right, the last column only down, the bottom-right pixel never is.
    """
    mask = np.asarray(mask, dtype=bool)
    boundary = np.zeros_like(mask)
    core = mask[:-1, :-1]
    boundary[:-1, :-1] = (core != mask[:-1, 1:]) | (core != mask[1:, :-1]) | (core != mask[1:, 1:])
    boundary[-1, :-1] = mask[-1, :-1] != mask[-1, 1:]
    boundary[:-1, -1] = mask[:-1, -1] != mask[1:, -1]
    return boundary


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P ∩ G| / |P ∪ G|, 1 when both masks are empty."""
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def f_from_boundary_counts(n_pred: int, n_gt: int, pred_matched: int, gt_matched: int) -> float:
    """Boundary F-measure from the boundary sizes and the matched counts (official edge cases)."""
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision, recall = pred_matched / n_pred, gt_matched / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _dilate(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.dilate(mask.view(np.uint8), kernel).view(bool)


def matched_boundary_pixels(boundary: np.ndarray, other: np.ndarray, radius: int) -> int:
    """|boundary ∩ dilate(other, disk(radius))|: boundary pixels with an `other` pixel in reach.

    Equal to dilating `other` with the disk (the official way), but cheaper: the square inscribed
    in the disk and the square around it are separable dilations, ten times faster than the disk.
    Pixels reached by the inner square are matched, pixels out of the outer square's reach are
    not; only the few in between are decided with the disk itself, in the box around them.
    """
    n_boundary = np.count_nonzero(boundary)
    if n_boundary == 0:
        return 0
    inner_half = math.isqrt(radius * radius // 2)  # (dx, dy) in the square => dx^2 + dy^2 <= r^2
    inner_reach = _dilate(other, np.ones((2 * inner_half + 1,) * 2, np.uint8))
    matched = np.count_nonzero(boundary & inner_reach)
    if matched == n_boundary:
        return matched
    outer_reach = _dilate(other, np.ones((2 * radius + 1,) * 2, np.uint8))
    undecided = boundary & outer_reach & ~inner_reach
    # Every `other` pixel within the disk of an undecided pixel lies in their box grown by radius.
    undecided_box = _nonzero_box(undecided.view(np.uint8))
    if undecided_box is None:
        return matched
    box = _grown(undecided_box, radius, undecided.shape)
    disk_reach = _dilate(np.ascontiguousarray(other[box]), disk_kernel(radius))
    return matched + np.count_nonzero(undecided[box] & disk_reach)


def boundary_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """Boundary F-measure of two binary masks of one frame with tolerance `radius` pixels."""
    pred_boundary, gt_boundary = seg2bmap(pred), seg2bmap(gt)
    return f_from_boundary_counts(
        np.count_nonzero(pred_boundary),
        np.count_nonzero(gt_boundary),
        matched_boundary_pixels(pred_boundary, gt_boundary, radius),
        matched_boundary_pixels(gt_boundary, pred_boundary, radius),
    )


def decay_bin_edges(n_frames: int) -> np.ndarray:
    """The five bin-edge indices of the decay; the official cast to uint8 wraps them mod 256."""
    edges = np.round(np.linspace(1, n_frames, 5) + 1e-10) - 1
    return edges.astype(np.int64) % 256


def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall (fraction > 0.5) and decay (first quarter minus last quarter) of one object."""
    values = np.asarray(values, dtype=np.float64)
    edges = decay_bin_edges(len(values))
    bins = [values[edges[k] : edges[k + 1] + 1] for k in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


# --- Fast per-frame measures -------------------------------------------------------------------


Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


def _nonzero_box(ids: np.ndarray) -> Box | None:
    """Bounding box of the nonzero pixels of a 2-D uint8 map (OpenCV's SIMD scan), or None."""
    import cv2

    left, top, width, height = cv2.boundingRect(ids)
    return None if width == 0 else (top, left, top + height, left + width)


def _grown(box: Box, margin: int, shape: tuple[int, int], offset: tuple[int, int] = (0, 0)):
    """`box` (relative to `offset`) grown by `margin` and clipped to `shape`, as slices."""
    top, left, bottom, right = box
    return (
        slice(max(offset[0] + top - margin, 0), min(offset[0] + bottom + margin, shape[0])),
        slice(max(offset[1] + left - margin, 0), min(offset[1] + right + margin, shape[1])),
    )


def score_frame(gt: np.ndarray, result: np.ndarray, n_objects: int) -> tuple[list[float], list[float]]:
    """J and F of objects 1..n_objects on one frame of uint8 id maps, each object in its own box.

    Equal to `jaccard` and `boundary_f` on the whole frame (see the module docstring). The boxes
    have one pixel of margin: a mask's boundary reaches one pixel above and left of it, and the
    row and column after it must be seen as background, not as the image border.
    """
    radius = boundary_tolerance(*gt.shape)
    boxes = [box for box in (_nonzero_box(gt), _nonzero_box(result)) if box is not None]
    if not boxes:
        return [1.0] * n_objects, [1.0] * n_objects
    # Every object of both maps lies in the union of their nonzero boxes: search only there.
    union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    gt_ids, result_ids = gt[union[0] : union[2], union[1] : union[3]], result[union[0] : union[2], union[1] : union[3]]
    j_values, f_values = [], []
    for object_id in range(1, n_objects + 1):
        object_box = _nonzero_box(((gt_ids == object_id) | (result_ids == object_id)).view(np.uint8))
        if object_box is None:  # absent from both: J = 1 (empty union), F = 1 (no boundaries)
            j_values.append(1.0)
            f_values.append(1.0)
            continue
        box = _grown(object_box, 1, gt.shape, offset=union[:2])
        gt_mask, pred_mask = gt[box] == object_id, result[box] == object_id
        j_values.append(jaccard(pred_mask, gt_mask))
        f_values.append(boundary_f(pred_mask, gt_mask, radius))
    return j_values, f_values


# --- Sequences and whole results folders -------------------------------------------------------


@dataclass
class SequenceScores:
    """Per-frame J and F (`[n_objects, n_frames]`) of one sequence, frames 1..T-2."""

    name: str
    frames: list[str]
    j: np.ndarray
    f: np.ndarray


@dataclass
class SequenceTask:
    name: str
    annotations: list[Path]
    results_dir: Path
    merge_objects: bool


def read_annotation(path: Path, merge_objects: bool) -> np.ndarray:
    """Annotation ids with void (255) as background; with `merge_objects` every id becomes 1."""
    ids = read_ids(path)
    ids[ids == VOID_ID] = 0
    if merge_objects:
        ids = (ids != 0).view(np.uint8)
    return ids


def score_sequence(task: SequenceTask) -> SequenceScores:
    """Score frames 1..T-2 of one sequence; objects are the ids of its first annotation."""
    n_objects = int(read_annotation(task.annotations[0], task.merge_objects).max())
    scored = task.annotations[1:-1]
    j = np.empty((n_objects, len(scored)))
    f = np.empty((n_objects, len(scored)))
    for index, annotation_path in enumerate(scored):
        gt = read_annotation(annotation_path, task.merge_objects)
        result_path = task.results_dir / annotation_path.name
        result = read_ids(result_path)
        if result.shape != gt.shape:
            raise VcorrError(
                f"{result_path}: result of size {result.shape[1]}x{result.shape[0]}, but the "
                f"annotation {annotation_path} is {gt.shape[1]}x{gt.shape[0]}"
            )
        if task.merge_objects:
            result = (result != 0).view(np.uint8)
        highest = int(result.max())
        if highest > n_objects:
            raise VcorrError(
                f"{result_path}: object id {highest} in sequence {task.name}, which has only "
                f"{n_objects} object(s) in its first annotation frame"
            )
        j[:, index], f[:, index] = score_frame(gt, result, n_objects)
    return SequenceScores(task.name, [path.stem for path in scored], j, f)


def sequence_names(davis_root: Path, subset: str, year: int) -> list[str]:
    from vcorr.data.readers import davis_image_set, read_names

    list_file = davis_image_set(davis_root, subset, year)
    if not list_file.is_file():
        raise VcorrError(f"{list_file}: no such sequence list: unknown subset {subset!r} for DAVIS-{year}")
    return read_names(list_file)


def sequence_tasks(davis_root: Path, results_dir: Path, subset: str, year: int,
                   sequences: Sequence[str] | None = None) -> list[SequenceTask]:
    """Check the layout of both folders up front, before any frame is decoded. `sequences` keeps
    only these of the subset's list (in list order); a name not in the list is an error."""
    davis_root, results_dir = Path(davis_root), Path(results_dir)
    names = sequence_names(davis_root, subset, year)
    if sequences is not None:
        unknown = sorted(set(sequences) - set(names))
        if unknown:
            from vcorr.data.readers import davis_image_set

            raise VcorrError(f"{davis_image_set(davis_root, subset, year)}: does not list {', '.join(unknown)}")
        names = [name for name in names if name in set(sequences)]
    tasks = []
    for name in names:
        annotation_dir = davis_root / "Annotations" / "480p" / name
        annotations = sorted(annotation_dir.glob("*.png"))
        if len(annotations) < 3:
            raise VcorrError(
                f"{annotation_dir}: sequence {name} has {len(annotations)} annotation frame(s); "
                "semi-supervised scoring needs at least 3 (the first and last are not scored)"
            )
        if not (results_dir / name).is_dir():
            raise VcorrError(f"{results_dir / name}: sequence {name} is missing from the results")
        tasks.append(SequenceTask(name, annotations, results_dir / name, merge_objects=year == 2016))
    return tasks


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # the workers already use every core


def evaluate(
    davis_root: Path,
    results_dir: Path,
    subset: str = "val",
    year: int = 2017,
    jobs: int | None = None,
    progress: bool = True,
    sequences: Sequence[str] | None = None,
) -> list[SequenceScores]:
    """Scores of every sequence of the subset (or of `sequences` among them), in list order, over
    `jobs` processes."""
    from tqdm import tqdm

    tasks = sequence_tasks(davis_root, results_dir, subset, year, sequences)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    bar = tqdm(total=len(tasks), desc="score davis", unit="seq", disable=not progress)
    scores: dict[str, SequenceScores] = {}
    if jobs == 1:
        for task in tasks:
            scores[task.name] = score_sequence(task)
            bar.update()
    else:
        # Longest sequences first, so no worker is left alone with a long one at the end.
        ordered = sorted(tasks, key=lambda task: len(task.annotations), reverse=True)
        # forkserver, not fork: a process that already runs threads (torch, tqdm, a loader) can
        # fork a worker holding one of their locks, which then waits forever.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        with concurrent.futures.ProcessPoolExecutor(jobs, context, initializer=_init_worker) as pool:
            futures = [pool.submit(score_sequence, task) for task in ordered]
            try:
                for future in concurrent.futures.as_completed(futures):
                    result = future.result()
                    scores[result.name] = result
                    bar.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    bar.close()
    return [scores[task.name] for task in tasks]


def per_object_statistics(sequences: Sequence[SequenceScores]) -> dict[str, dict[str, float]]:
    """`<seq>_<id>` -> J and F mean, recall and decay, objects in sequence order."""
    table = {}
    for sequence in sequences:
        for index in range(sequence.j.shape[0]):
            j_mean, j_recall, j_decay = db_statistics(sequence.j[index])
            f_mean, f_recall, f_decay = db_statistics(sequence.f[index])
            table[f"{sequence.name}_{index + 1}"] = {
                "J-Mean": j_mean, "J-Recall": j_recall, "J-Decay": j_decay,
                "F-Mean": f_mean, "F-Recall": f_recall, "F-Decay": f_decay,
            }  # fmt: skip
    return table


def global_measures(per_object: dict[str, dict[str, float]]) -> dict[str, float]:
    """Means over all objects pooled across sequences (not per sequence), as the official tool."""

    def pooled(key: str) -> float:
        return float(np.mean([stats[key] for stats in per_object.values()]))

    measures = {key: pooled(key) for key in GLOBAL_MEASURES[1:]}
    return {"J&F-Mean": (measures["J-Mean"] + measures["F-Mean"]) / 2, **measures}
