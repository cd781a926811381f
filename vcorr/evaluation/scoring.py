"""Scoring a predictions folder like the official tools (J&F, PCK, mIoU), fast.

  score_davis  J&F (davis2017-evaluation, semi-supervised); also writes the official CSVs
               global_results-<subset>.csv and per-sequence_results-<subset>.csv into `csv_dir`
               (the official tool writes them into the results folder), recomputed on every run.
  score_jhmdb  PCK@0.1..0.5 (VFS / Spa-then-Temp evaluation) from <action>/<clip>.npy [2, 15, T]
               (x, y) coordinates, 0-based.
  score_vip    mIoU over 20 classes, one confusion matrix over all frames.

Lists and labels are read with vcorr.data.readers, as propagation reads them. Malformed
submissions are refused with the file named; nothing is written then. Every scorer takes
`sequences` (score only these of its list: training's validation scores a few) and `verbose`
(False: no table, no progress bar).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vcorr.errors import VcorrError

# Headline numbers per scorer, in the order the summary shows them; the first is the one score
# training's validation ranks checkpoints by.
HEADLINES: dict[str, tuple[str, ...]] = {
    "davis": ("J&F-Mean", "J-Mean", "F-Mean"),
    "jhmdb": ("PCK@0.1", "PCK@0.2"),
    "vip": ("mIoU",),
}


def check_arguments(data_root: Path, predictions: Path, *outputs: tuple[Path | None, bool]) -> None:
    """What every scorer refuses before reading or writing anything: a missing or non-folder
    --data-root / --predictions, an output (`(path, is_folder)`) that cannot be written."""
    from vcorr.io import check_writable, require_folder

    require_folder(data_root, "--data-root")
    require_folder(predictions, "--predictions")
    for path, folder in outputs:
        if path is not None:
            check_writable(path, "--csv-dir" if folder else "--out", folder=folder)


def scoring_code_digest(scorer: str) -> str:
    """The digest of the code of scorer `score_<scorer>` of this module and of every vcorr module it
    reaches (`vcorr.provenance.code_digest`): a change to one scorer's code leaves the others'."""
    from vcorr.provenance import code_digest

    return code_digest(f"{__name__}:score_{scorer}")


def only(names: list[str], wanted: Sequence[str] | None, list_file: Path) -> list[str]:
    """`names` (a list file's, in its order) restricted to `wanted`; a wanted name the list does
    not hold is an error naming the list."""
    if wanted is None:
        return names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise VcorrError(f"{list_file}: does not list {', '.join(unknown)}")
    return [name for name in names if name in set(wanted)]


def _versions(scorer: str) -> dict[str, str]:
    import cv2
    import numpy

    from vcorr import __version__

    return {"vcorr": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "opencv": cv2.__version__, "scoring_code": scoring_code_digest(scorer)}


# --- DAVIS --------------------------------------------------------------------------------------


def _official_csv(rows: list[list], header: list[str]) -> str:
    """CSV as the official tool's pandas call writes it: floats as %.3f, NaN as an empty field."""
    import csv
    import io
    import math

    def cell(value):
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.3f}"
        return value

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[cell(value) for value in row] for row in rows])
    return text.getvalue()


def _table(rows: list[list], header: list[str]) -> str:
    """A right-aligned text table, floats with 6 decimals (the official printout, via pandas)."""
    cells = [header] + [[f"{v:.6f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return "\n".join(" ".join(value.rjust(width) for value, width in zip(row, widths)) for row in cells)


def score_davis(
    data_root: Path, predictions: Path, out: Path | None = None, subset: str = "val", year: int = 2017,
    jobs: int | None = None, csv_dir: Path | None = None, sequences: Sequence[str] | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """J&F of `predictions` against the DAVIS root; the JSON to `out`, the official CSVs to
    `csv_dir` (default: the predictions folder, as the official tool does). Returns the global measures."""
    from vcorr.metrics import worker_pool

    if (jobs or os.cpu_count() or 1) > 1:
        worker_pool.start("vcorr.metrics.davis")  # its imports then overlap the ones below
    from vcorr.io import atomic_file, write_json
    from vcorr.metrics import davis

    predictions, csv_dir = Path(predictions), Path(csv_dir or predictions)
    check_arguments(data_root, predictions, (out, False), (csv_dir, True))
    start = time.perf_counter()
    scored = davis.evaluate(data_root, predictions, subset, year, jobs, progress=verbose, sequences=sequences)
    statistics = davis.per_object_statistics(scored)
    measures = davis.global_measures(statistics)
    seconds = time.perf_counter() - start

    global_header, global_rows = list(davis.GLOBAL_MEASURES), [[measures[key] for key in davis.GLOBAL_MEASURES]]
    object_header = ["Sequence", "J-Mean", "F-Mean"]
    object_rows = [[name, stats["J-Mean"], stats["F-Mean"]] for name, stats in statistics.items()]
    for name, header, rows in (("global_results", global_header, global_rows),
                               ("per-sequence_results", object_header, object_rows)):
        with atomic_file(csv_dir / f"{name}-{subset}.csv") as temporary:
            temporary.write_text(_official_csv(rows, header))
    if out:
        write_json(out, {
            "benchmark": f"davis{year}", "subset": subset,
            "davis_root": str(data_root), "results": str(predictions),
            "global": measures,
            "per_object": {name: {"J-Mean": s["J-Mean"], "F-Mean": s["F-Mean"]} for name, s in statistics.items()},
            "per_object_statistics": statistics,
            "per_frame": {
                sequence.name: {
                    "frames": sequence.frames,
                    "J": {str(i + 1): row.tolist() for i, row in enumerate(sequence.j)},
                    "F": {str(i + 1): row.tolist() for i, row in enumerate(sequence.f)},
                }
                for sequence in scored
            },
            "seconds": seconds, "versions": _versions("davis"),
        })  # fmt: skip

    if not verbose:
        return measures
    print(f"--------------------------- Global results for {subset} ---------------------------")
    print(_table(global_rows, global_header))
    print(f"\n---------- Per sequence results for {subset} ----------")
    print(_table(object_rows, object_header))
    print(f"\nTotal time: {seconds:.2f} s", file=sys.stderr)
    return measures


# --- JHMDB --------------------------------------------------------------------------------------


def read_predicted_coords(path: Path, n_frames: int, n_joints: int):
    """A clip's `[2, J, T']` predicted coordinates, truncated to the annotated T frames."""
    import numpy as np

    try:
        coords = np.load(path)
    except FileNotFoundError:
        raise VcorrError(f"{path}: missing prediction") from None
    except (ValueError, OSError) as error:
        raise VcorrError(f"{path}: unreadable .npy ({error})") from None
    if coords.ndim != 3 or coords.shape[:2] != (2, n_joints):
        raise VcorrError(f"{path}: expected a [2, {n_joints}, T] coordinate array, got {list(coords.shape)}")
    if coords.shape[2] < n_frames:
        raise VcorrError(f"{path}: {coords.shape[2]} predicted frames, the clip has {n_frames} annotated")
    return coords[:, :, :n_frames]


def score_jhmdb(data_root: Path, predictions: Path, split: Path, out: Path, sequences: Sequence[str] | None = None,
                verbose: bool = True) -> dict[str, float]:
    """PCK of `<predictions>/<action>/<clip>.npy` over the clips of the `split` list (or over
    `sequences` among them)."""
    from tqdm import tqdm

    from vcorr.data.readers import jhmdb_joints_file, jhmdb_split_clips, read_joint_positions
    from vcorr.io import write_json
    from vcorr.metrics.pck import pck

    check_arguments(data_root, predictions, (out, False))
    start = time.perf_counter()
    clips = only(jhmdb_split_clips(split), sequences, split)
    coords, truths = [], []
    for clip in tqdm(clips, desc="score jhmdb", unit="clip", disable=not verbose):
        gt = read_joint_positions(jhmdb_joints_file(data_root, clip))
        coords.append(read_predicted_coords(Path(predictions) / f"{clip}.npy", gt.shape[2], gt.shape[1]))
        truths.append(gt)
    scores = pck(coords, truths)
    write_json(out, {
        "benchmark": "jhmdb", "split": str(split), "jhmdb_root": str(data_root),
        "predictions": str(predictions), "unit": "percent", "global": scores,
        "clips": clips,
        "seconds": time.perf_counter() - start, "versions": _versions("jhmdb"),
    })  # fmt: skip
    if verbose:
        for name, value in scores.items():
            print(f"{name}: {value:.3f}")
    return scores


# --- VIP ----------------------------------------------------------------------------------------


def vip_frames(vip_root: Path, results: Path, video_list: Path, sequences: Sequence[str] | None = None,
               verbose: bool = True):
    """(name, annotation ids, predicted ids) of every annotated frame of the listed videos (or of
    `sequences` among them)."""
    from tqdm import tqdm

    from vcorr.data.readers import read_names
    from vcorr.io_png import read_ids

    videos = only(read_names(video_list, "video list"), sequences, video_list)
    for video in tqdm(videos, desc="score vip", unit="video", disable=not verbose):
        annotation_dir = vip_root / "Annotations" / "Category_ids" / video
        annotations = sorted(annotation_dir.glob("*.png"))
        if not annotations:
            raise VcorrError(f"{annotation_dir}: no annotations for video {video}")
        if not (results / video).is_dir():
            raise VcorrError(f"{results / video}: video {video} is missing from the results")
        for annotation in annotations:
            result = results / video / annotation.name
            yield str(result), read_ids(annotation), read_ids(result)


def score_vip(data_root: Path, predictions: Path, video_list: Path, out: Path, sequences: Sequence[str] | None = None,
              verbose: bool = True) -> dict[str, float]:
    """mIoU of `<predictions>/<video>/<frame>.png` over the annotated frames of the listed videos
    (or of `sequences` among them)."""
    from vcorr.io import write_json
    from vcorr.metrics.vip import miou

    check_arguments(data_root, predictions, (out, False))
    start = time.perf_counter()
    data_root, predictions = Path(data_root), Path(predictions)
    scores = miou(vip_frames(data_root, predictions, video_list, sequences, verbose))
    write_json(out, {
        "benchmark": "vip", "vip_root": str(data_root), "results": str(predictions),
        "list": str(video_list), "unit": "percent",
        "global": {"mIoU": scores["mIoU"]},
        "per_class_IoU": {str(index): value for index, value in enumerate(scores["per_class_IoU"])},
        "frames": scores["frames"], "confusion_matrix": scores["confusion_matrix"],
        "seconds": time.perf_counter() - start, "versions": _versions("vip"),
    })  # fmt: skip
    if verbose:
        print(f"mIoU: {scores['mIoU']:.3f}")
    return {"mIoU": scores["mIoU"]}
