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
    """The boundary map of a bool mask, packed in `layout` (margin words first)."""
    height, width = mask.shape
    bits = np.zeros((height + 1, packed_masks.WORD_BITS * layout.stride), bool)
    # A copy of the last row and column gives the edge pixels their official neighbours.
    bits[:, : width + 1] = np.pad(mask, ((0, 1), (0, 1)), mode="edge")
    boundary = packed_masks.seg2bmap(packed_masks.pack_rows(bits)[None], width)
    return np.concatenate([np.zeros(layout.margin, np.uint64), boundary.reshape(-1)])


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


class Workspace:
    """Arrays reused by every frame that one process scores, handed out as views.

    A fresh frame-sized temporary per frame is new memory that the kernel maps and zeroes for
    work that touches it once (system time). These are allocated once, at the largest size asked
    for; their contents are never assumed.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        array = self._arrays.get(name)
        if array is None or array.size < size:
            array = self._arrays[name] = np.empty(size, bool)
        return array[:size].reshape(shape)


def _nonzero_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """Top, left, bottom, right (exclusive) of the nonzero pixels of a 2-D uint8 image (one OpenCV
    scan; rows may lie apart in memory), or None."""
    import cv2

    left, top, width, height = cv2.boundingRect(image)
    return None if width == 0 else (top, left, top + height, left + width)


@dataclass
class _FrameMaps:
    """Of one frame, per object, in the result and in the annotation: its pixels, its boundary
    pixels, its packed boundary map on the frame's region ([side, object]: side 0 the result)
    and the box of that map's boundary pixels (first row, first word, end row, end word)."""

    areas: list[tuple[int, int]]
    intersections: list[int]  # pixels of the object in both
    sizes: list[tuple[int, int]]
    maps: np.ndarray  # [2, K, rows, words]
    boxes: list[tuple[tuple[int, int, int, int] | None, tuple[int, int, int, int] | None]]


def _frame_maps(gt: np.ndarray, result: np.ndarray, ids: np.ndarray, workspace: Workspace) -> _FrameMaps | None:
    """All objects' masks and boundary maps of one frame, computed together (`ids`: `[K, 1, 1]`
    object ids), on the region around the union of both maps' nonzero boxes; None when both are 0.

    Every mask is zero outside that box, so every boundary pixel lies in it grown by one row up and
    one column left (a pixel is one when it differs from a neighbour right or below), and the row
    and column after it are zero where the frame goes on: the frame's own (at its edge, copies of
    its last, set after the pixel counts). The region's columns are whole words of the frame's
    64-pixel grid, with one more word after them for the column after.
    """
    height, width = gt.shape
    boxes = [box for box in (_nonzero_box(result), _nonzero_box(gt)) if box is not None]
    if not boxes:
        return None
    word, n_objects = packed_masks.WORD_BITS, len(ids)
    top, bottom = max(min(box[0] for box in boxes) - 1, 0), max(box[2] for box in boxes)
    first = max(min(box[1] for box in boxes) - 1, 0) // word
    end = -(-max(box[3] for box in boxes) // word)
    n_rows, n_words, region_width = bottom - top, end - first + 1, min(word * end, width) - word * first
    bits = workspace.get("bits", (2, n_objects, n_rows + 1, word * n_words))
    # The frame's rows and columns in the region and after it; what lies past its edge is zero.
    last_row, last_column = min(bottom + 1, height), min(word * (end + 1), width)
    inside = bits[:, :, : last_row - top, : last_column - word * first]
    for side, frame in enumerate((result, gt)):
        np.equal(frame[None, top:last_row, word * first : last_column], ids, out=inside[side])
    bits[:, :, last_row - top :] = False
    bits[:, :, :, last_column - word * first :] = False
    masks = packed_masks.pack_rows(bits)
    images = masks.reshape(2 * n_objects, -1)
    areas = [packed_masks.count(image) for image in images]
    intersections = [packed_masks.count_common(masks[0, index], masks[1, index]) for index in range(n_objects)]
    if word * end >= width:
        packed_masks.copy_column(masks[:, :, :n_rows], region_width - 1, region_width)
    if bottom == height:
        masks[:, :, n_rows] = masks[:, :, n_rows - 1]
    boundaries = packed_masks.seg2bmap(masks.reshape(-1, n_rows + 1, n_words), region_width)
    sizes = [packed_masks.count(image) for image in boundaries]
    extents = []
    for image in boundaries:  # OpenCV's box of a map's bytes: its rows, and its words
        box = _nonzero_box(image.view(np.uint8))
        extents.append(None if box is None else (box[0], box[1] // 8, box[2], -(-box[3] // 8)))
    return _FrameMaps(list(zip(areas[:n_objects], areas[n_objects:])), intersections,
                      list(zip(sizes[:n_objects], sizes[n_objects:])), boundaries.reshape(2, n_objects, n_rows, n_words),
                      list(zip(extents[:n_objects], extents[n_objects:])))  # fmt: skip


def score_frame(gt: np.ndarray, result: np.ndarray, n_objects: int) -> tuple[list[float], list[float]]:
    """J and F of objects 1..n_objects on one frame of uint8 id maps (see `score_frames`)."""
    j, f = score_frames([(gt, result)], n_objects, Workspace())
    return j[:, 0].tolist(), f[:, 0].tolist()


def score_frames(
    frames: Iterable[tuple[np.ndarray, np.ndarray]], n_objects: int, workspace: Workspace
) -> tuple[np.ndarray, np.ndarray]:
    """J and F (`[n_objects, n_frames]`) of objects 1..n_objects on (annotation, result) id maps
    (ids above n_objects, void included, are no object).

    Equal to `jaccard` and `boundary_f` on each whole frame (see the module docstring). The
    boundary windows of all objects and frames are matched together, in batches of
    `_MATCH_BATCH_WORDS` (`packed_masks.matched_in_reach`).
    """
    ids = np.arange(1, n_objects + 1, dtype=np.uint8).reshape(-1, 1, 1)
    j_columns, f_columns = [], []
    windows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (object, frame) -> to match
    boundary_sizes: dict[tuple[int, int], tuple[int, int]] = {}  # (object, frame) -> |B(P)|, |B(G)|
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
        j_columns.append(np.ones(n_objects))  # both masks empty
        f_columns.append(np.ones(n_objects))
        maps = _frame_maps(gt, result, ids, workspace) if n_objects else None
        if maps is None:
            continue
        reach = -(-radius // packed_masks.WORD_BITS)  # words
        n_rows, n_words = maps.maps.shape[2:]
        for index in range(n_objects):
            (pred_area, gt_area), (n_pred, n_gt) = maps.areas[index], maps.sizes[index]
            j_columns[frame][index] = _jaccard_of_areas(pred_area, gt_area, maps.intersections[index])
            f_columns[frame][index] = f_from_boundary_counts(n_pred, n_gt, 0, 0)
            if not (n_pred and n_gt):
                continue  # the sizes alone decide F
            # Matched pixels lie within reach of both boundaries: in these rows and words.
            pred_box, gt_box = maps.boxes[index]
            rows = slice(max(max(pred_box[0], gt_box[0]) - radius, 0), min(min(pred_box[2], gt_box[2]) + radius, n_rows))
            words = slice(max(max(pred_box[1], gt_box[1]) - reach, 0), min(min(pred_box[3], gt_box[3]) + reach, n_words))
            if rows.start < rows.stop and words.start < words.stop:
                windows[index, frame] = maps.maps[0, index, rows, words], maps.maps[1, index, rows, words]
                boundary_sizes[index, frame] = n_pred, n_gt
                batch_words += (rows.stop - rows.start) * (words.stop - words.start)
                if batch_words > _MATCH_BATCH_WORDS:
                    match()
                    batch_words = 0
    if windows:
        match()
    return np.stack(j_columns, axis=1), np.stack(f_columns, axis=1)


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
    """Annotation ids, void (255) included: scoring compares ids with 1..n_objects (below void),
    so void is background. With `merge_objects` every object id becomes 1, void 0."""
    ids = read_ids(path)
    if merge_objects:
        ids = ((ids != 0) & (ids != VOID_ID)).view(np.uint8)
    return ids


def score_sequence(task: SequenceTask) -> SequenceScores:
    """Score frames 1..T-2 of one sequence; objects are the ids of its first annotation."""
    first = read_annotation(task.annotations[0], task.merge_objects)
    n_objects = int(first[first != VOID_ID].max(initial=0))
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
