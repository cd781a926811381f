"""DAVIS semi-supervised J&F, the numbers davis2017-evaluation reports, computed fast.

The definitions (../shared/reference/metrics.md) are the official tool's: Jaccard J per object
and frame, boundary F-measure with Martin et al.'s `seg2bmap` boundaries and a disk dilation of
radius ceil(0.008 * diagonal), and `db_statistics` (mean, recall, decay with the uint8 bin-index
wrap). What differs is only the cost, and every step is exact:

- Frames are decoded once as uint8 id maps (never float64 stacks); each object is looked for
  only within the map's nonzero box.
- Each boundary map is computed once per mask and object, packed 64 pixels to a word
  (`packed_masks`: an eighth of the memory traffic of a bool image), on the object's bounding box
  grown by the matching reach (radius + 1) and widened to whole words of the frame. Every
  boundary pixel lies in the box grown by one pixel, and seg2bmap there needs only the row and
  column after the grown box (the frame's own, or at the frame's edge copies of its last).
- Boundary pixels are matched only in the window where the two grown boxes overlap: both pixels
  of a matched pair lie within reach of both boxes, so dilating inside the window gives the
  full-frame dilation at every pixel that can be matched. The square inscribed in the disk is
  tried first, at half the work: the disk is needed only when it leaves pixels unmatched.
- Worker processes keep the memory they free for the next frame (`_keep_freed_memory`).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcorr.errors import VcorrError
from vcorr.io_png import read_ids
from vcorr.metrics import packed_masks, worker_pool
from vcorr.metrics.packed_masks import PackedLayout, disk_kernel  # noqa: F401 (the official disk)

VOID_ID = 255
BOUNDARY_THRESHOLD = 0.008
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_MATCH_BATCH_WORDS = 2**16  # boundary words matched together: 512 KiB a map, its dilations fit in cache
GLOBAL_MEASURES = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


# --- Definitions -------------------------------------------------------------------------------


def boundary_tolerance(height: int, width: int) -> int:
    """Dilation radius in pixels: ceil(0.008 * image diagonal), 8 at 480x854."""
    return math.ceil(BOUNDARY_THRESHOLD * math.sqrt(height * height + width * width))


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Martin et al.'s one-pixel boundary map of a binary mask (bool `[H, W]`).

    A pixel is a boundary pixel when it differs from its right, bottom or bottom-right neighbour;
    the last row looks only right, the last column only down, the bottom-right pixel never is.
    """
    mask = np.asarray(mask, dtype=bool)
    layout = PackedLayout(mask.shape[1], 0)
    return layout.unpack(_packed_seg2bmap(mask, layout), mask.shape[0])


def _packed_seg2bmap(mask: np.ndarray, layout: PackedLayout) -> np.ndarray:
    # A copy of the last row and column gives the edge pixels their official neighbours.
    return packed_masks.seg2bmap(layout.pack(np.pad(mask, ((0, 1), (0, 1)), mode="edge")), layout)


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P ∩ G| / |P ∪ G|, 1 when both masks are empty."""
    return _jaccard_of_areas(np.count_nonzero(pred), np.count_nonzero(gt), np.count_nonzero(pred & gt))


def _jaccard_of_areas(pred_area: int, gt_area: int, intersection: int) -> float:
    union = pred_area + gt_area - intersection
    return 1.0 if union == 0 else intersection / union


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


def matched_boundary_pixels(boundary: np.ndarray, other: np.ndarray, radius: int) -> int:
    """|boundary ∩ dilate(other, disk(radius))|: boundary pixels with an `other` pixel in reach."""
    layout = PackedLayout(boundary.shape[1], radius)
    return packed_masks.count_in_reach(layout.pack(boundary), layout.pack(other), layout)


def boundary_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """Boundary F-measure of two binary masks of one frame with tolerance `radius` pixels."""
    layout = PackedLayout(pred.shape[1], radius)
    pred_boundary, gt_boundary = _packed_seg2bmap(pred, layout), _packed_seg2bmap(gt, layout)
    return f_from_boundary_counts(
        packed_masks.count(pred_boundary),
        packed_masks.count(gt_boundary),
        packed_masks.count_in_reach(pred_boundary, gt_boundary, layout),
        packed_masks.count_in_reach(gt_boundary, pred_boundary, layout),
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
    """Bounding box of the nonzero pixels of a 2-D uint8 map (one OpenCV scan), or None."""
    import cv2

    left, top, width, height = cv2.boundingRect(ids)
    return None if width == 0 else (top, left, top + height, left + width)


class Workspace:
    """Frame-sized arrays reused by every frame that one process scores, handed out as views.

    A fresh frame-sized temporary per object and mask is new memory that the kernel maps and
    zeroes for work that touches it once (system time). These are allocated once, at the
    largest size asked for; their contents are never assumed.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        size = shape[0] * shape[1]
        array = self._arrays.get(name)
        if array is None or array.size < size:
            array = self._arrays[name] = np.empty(size, bool)
        return array[:size].reshape(shape)

    def buffers(self, role: str, search: Box | None, frame_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """For one map of a frame: a mask on its search box (contiguous, for OpenCV's scan), and
        one to cut a mask with one more row and column from (`_mask_and_next`)."""
        search_shape = (0, 0) if search is None else (search[2] - search[0], search[3] - search[1])
        return (self.get(f"{role} search", search_shape),
                self.get(f"{role} region", (frame_shape[0] + 1, frame_shape[1] + 1)))  # fmt: skip


class _ObjectOnFrame:
    """One object's mask on a frame, its box, and its packed boundary map around the box.

    The map covers the box grown by the matching reach (radius + 1: boundary pixels lie in the
    box grown by one), its columns widened to whole words of the frame's 64-pixel grid, so that
    the maps of both masks share a grid and meet by slicing.
    """

    def __init__(self, ids: np.ndarray, search: Box | None, object_id: int, radius: int,
                 search_buffer: np.ndarray, region_buffer: np.ndarray) -> None:  # fmt: skip
        self.box = None
        self.area = self.n_boundary = 0
        if search is None:
            return
        top, left, bottom, right = search
        self.search = search
        self.in_search = np.equal(ids[top:bottom, left:right], object_id, out=search_buffer)
        box = _nonzero_box(self.in_search.view(np.uint8))
        if box is None:
            return
        self.box = (box[0] + top, box[1] + left, box[2] + top, box[3] + left)
        self.area = np.count_nonzero(self.in_search[box[0] : box[2], box[1] : box[3]])
        height, width = ids.shape
        reach, word = radius + 1, packed_masks.WORD_BITS
        self.rows = slice(max(self.box[0] - reach, 0), min(self.box[2] + reach, height))
        self.words = slice(max(self.box[1] - reach, 0) // word, -(-min(self.box[3] + reach, width) // word))
        columns = slice(word * self.words.start, min(word * self.words.stop, width))
        self.layout = PackedLayout(columns.stop - columns.start, radius)
        mask = _mask_and_next(ids, object_id, self.rows, columns, region_buffer)
        self.boundary = packed_masks.seg2bmap(self.layout.pack(mask), self.layout)
        self.n_boundary = packed_masks.count(self.boundary)

    def mask(self, box: Box) -> np.ndarray:
        """The mask on `box` (inside the search box)."""
        top, left = self.search[:2]
        return self.in_search[box[0] - top : box[2] - top, box[1] - left : box[3] - left]

    def boundary_window(self, rows: slice, words: slice) -> np.ndarray:
        """The boundary map on `rows` and `words` (inside its own): rows x words, a view."""
        own_rows = self.boundary[self.layout.margin :].reshape(-1, self.layout.stride)
        return own_rows[rows.start - self.rows.start : rows.stop - self.rows.start,
                        words.start - self.words.start : words.stop - self.words.start]  # fmt: skip


def _mask_and_next(ids: np.ndarray, object_id: int, rows: slice, columns: slice, out: np.ndarray) -> np.ndarray:
    """`ids[rows, columns] == object_id` and the row and column after: the frame's own, or at its
    edge copies of the last (the official seg2bmap compares edge pixels only along the edge)."""
    height, width = ids.shape
    end_row, end_column = min(rows.stop + 1, height), min(columns.stop + 1, width)
    out = out[: rows.stop - rows.start + 1, : columns.stop - columns.start + 1]
    np.equal(ids[rows.start : end_row, columns.start : end_column], object_id,
             out=out[: end_row - rows.start, : end_column - columns.start])  # fmt: skip
    if end_row == rows.stop:
        out[-1] = out[-2]
    if end_column == columns.stop:
        out[:, -1] = out[:, -2]
    return out


def score_frame(gt: np.ndarray, result: np.ndarray, n_objects: int) -> tuple[list[float], list[float]]:
    """J and F of objects 1..n_objects on one frame of uint8 id maps (see `score_frames`)."""
    j, f = score_frames([(gt, result)], n_objects, Workspace())
    return j[:, 0].tolist(), f[:, 0].tolist()


def score_frames(
    frames: Iterable[tuple[np.ndarray, np.ndarray]], n_objects: int, workspace: Workspace
) -> tuple[np.ndarray, np.ndarray]:
    """J and F (`[n_objects, n_frames]`) of objects 1..n_objects on (annotation, result) id maps.

    Equal to `jaccard` and `boundary_f` on each whole frame (see the module docstring). The
    boundary windows of all objects and frames are matched together, in batches of
    `_MATCH_BATCH_WORDS` (`packed_masks.matched_in_reach`).
    """
    j_columns, f_columns = [], []
    boundary_sizes: dict[tuple[int, int], tuple[int, int]] = {}  # (object, frame) -> |B(P)|, |B(G)|
    windows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (object, frame) -> to match
    radius, batch_words = None, 0

    def match() -> None:
        for key, matched in zip(windows, packed_masks.matched_in_reach(list(windows.values()), radius)):
            f_columns[key[1]][key[0]] = f_from_boundary_counts(*boundary_sizes[key], *matched)
        windows.clear()

    for frame, (gt, result) in enumerate(frames):
        if boundary_tolerance(*gt.shape) != radius:  # a batch is matched with one radius
            if windows:
                match()
            radius, batch_words = boundary_tolerance(*gt.shape), 0
        # Objects are searched for only where their maps are nonzero.
        gt_search, result_search = _nonzero_box(gt), _nonzero_box(result)
        pred_buffers = workspace.buffers("pred", result_search, gt.shape)
        gt_buffers = workspace.buffers("gt", gt_search, gt.shape)
        j_columns.append(np.empty(n_objects))
        f_columns.append(np.empty(n_objects))
        for index in range(n_objects):
            pred = _ObjectOnFrame(result, result_search, index + 1, radius, *pred_buffers)
            truth = _ObjectOnFrame(gt, gt_search, index + 1, radius, *gt_buffers)
            j_columns[frame][index] = _jaccard_in_boxes(pred, truth)
            f_columns[frame][index] = f_from_boundary_counts(pred.n_boundary, truth.n_boundary, 0, 0)
            if not (pred.n_boundary and truth.n_boundary):
                continue  # the sizes alone decide F
            rows = slice(max(pred.rows.start, truth.rows.start), min(pred.rows.stop, truth.rows.stop))
            words = slice(max(pred.words.start, truth.words.start), min(pred.words.stop, truth.words.stop))
            if rows.start < rows.stop and words.start < words.stop:
                # Matched pixels lie within reach of both boxes: in these rows and words.
                windows[index, frame] = pred.boundary_window(rows, words), truth.boundary_window(rows, words)
                boundary_sizes[index, frame] = pred.n_boundary, truth.n_boundary
                batch_words += (rows.stop - rows.start) * (words.stop - words.start)
                if batch_words > _MATCH_BATCH_WORDS:
                    match()
                    batch_words = 0
    if windows:
        match()
    return np.stack(j_columns, axis=1), np.stack(f_columns, axis=1)


def _jaccard_in_boxes(pred: _ObjectOnFrame, truth: _ObjectOnFrame) -> float:
    intersection = 0
    if pred.box is not None and truth.box is not None:
        both = (max(pred.box[0], truth.box[0]), max(pred.box[1], truth.box[1]),
                min(pred.box[2], truth.box[2]), min(pred.box[3], truth.box[3]))  # fmt: skip
        if both[0] < both[2] and both[1] < both[3]:
            intersection = np.count_nonzero(pred.mask(both) & truth.mask(both))
    return _jaccard_of_areas(pred.area, truth.area, intersection)


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
    import cv2

    ids = read_ids(path)
    cv2.threshold(ids, VOID_ID - 1, 0, cv2.THRESH_TOZERO_INV, dst=ids)  # ids above 254 (void) -> 0
    if merge_objects:
        ids = (ids != 0).view(np.uint8)
    return ids


def score_sequence(task: SequenceTask) -> SequenceScores:
    """Score frames 1..T-2 of one sequence; objects are the ids of its first annotation."""
    n_objects = int(read_annotation(task.annotations[0], task.merge_objects).max())
    scored = task.annotations[1:-1]
    j, f = score_frames(_frames(task, scored, n_objects), n_objects, Workspace())
    return SequenceScores(task.name, [path.stem for path in scored], j, f)


def _frames(task: SequenceTask, scored: list[Path], n_objects: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(annotation, result) id maps of the scored frames, each checked as it is read."""
    for annotation_path in scored:
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
        yield gt, result


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
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Make glibc keep the memory this worker frees for its next allocations.

    Every frame decodes into fresh frame-sized buffers (the inflated PNG, the id map). By default
    glibc gives such blocks back to the kernel when they are freed, and the next frame faults
    them in again, zeroed: that was half of the scoring time, as system time. Done only in the
    scoring workers, processes of their own, which hold the memory until they exit.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its defaults stand
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 16 * 2**20)  # blocks below this come from the heap...
    libc.mallopt(_M_TRIM_THRESHOLD, 256 * 2**20)  # ...which keeps up to this much free


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
        with concurrent.futures.ProcessPoolExecutor(jobs, worker_pool.context(__name__), initializer=_init_worker) as pool:
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
