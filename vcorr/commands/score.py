"""`vcorr score davis|jhmdb|vip`: the official numbers of a results folder, computed fast.

  davis  J&F (davis2017-evaluation, semi-supervised); also writes the official CSVs
         global_results-<subset>.csv and per-sequence_results-<subset>.csv into the results
         folder, recomputed on every run.
  jhmdb  PCK@0.1..0.5 (VFS / Spa-then-Temp evaluation) from <action>/<clip>.npy [2, 15, T] (x, y)
         coordinates, 0-based.
  vip    mIoU over 20 classes, one confusion matrix over all frames.

Malformed submissions are refused with the file named; nothing is written then.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from vcorr.errors import VcorrError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("score", help="score results like the official tools (J&F, PCK, mIoU)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="<benchmark>", required=True)

    davis = benchmarks.add_parser("davis", help="DAVIS semi-supervised J&F")
    davis.add_argument("--davis-root", type=Path, required=True,
                       help="DAVIS root holding Annotations/480p and ImageSets")
    davis.add_argument("--results", type=Path, required=True, help="folder of <sequence>/<frame>.png indexed PNGs")
    davis.add_argument("--subset", default="val", help="ImageSets/<year>/<subset>.txt (default val)")
    davis.add_argument("--year", type=int, choices=(2017, 2016), default=2017,
                       help="2016 merges every object id into one object (default 2017)")
    davis.add_argument("--out", type=Path, help="JSON with global, per-object and per-frame values")
    davis.add_argument("--jobs", type=int, default=None, help="processes (default: number of CPUs)")
    davis.set_defaults(func=run_davis)

    jhmdb = benchmarks.add_parser("jhmdb", help="JHMDB keypoint PCK@alpha")
    jhmdb.add_argument("--jhmdb-root", type=Path, required=True,
                       help="folder holding joint_positions/<action>/<clip>/joint_positions.mat")
    jhmdb.add_argument("--split", type=Path, required=True,
                       help="list file, one '<...>/joint_positions/<action>/<clip>/joint_positions.mat <frames>' per line")
    jhmdb.add_argument("--predictions", type=Path, required=True, help="folder of <action>/<clip>.npy [2, 15, T]")
    jhmdb.add_argument("--out", type=Path, required=True)
    jhmdb.set_defaults(func=run_jhmdb)

    vip = benchmarks.add_parser("vip", help="VIP part propagation mIoU")
    vip.add_argument("--vip-root", type=Path, required=True,
                     help="VIP root holding Annotations/Category_ids/<video>/<frame>.png and lists/")
    vip.add_argument("--results", type=Path, required=True, help="folder of <video>/<frame>.png")
    vip.add_argument("--list", type=Path, help="video list (default <vip-root>/lists/val_videos.txt)")
    vip.add_argument("--out", type=Path, required=True)
    vip.set_defaults(func=run_vip)


def _versions() -> dict[str, str]:
    import cv2
    import numpy

    from vcorr import __version__

    return {"vcorr": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "opencv": cv2.__version__}


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


def run_davis(args: argparse.Namespace) -> int:
    from vcorr.io import atomic_file, write_json
    from vcorr.metrics import davis

    start = time.perf_counter()
    sequences = davis.evaluate(args.davis_root, args.results, args.subset, args.year, args.jobs)
    statistics = davis.per_object_statistics(sequences)
    measures = davis.global_measures(statistics)
    seconds = time.perf_counter() - start

    global_header, global_rows = list(davis.GLOBAL_MEASURES), [[measures[key] for key in davis.GLOBAL_MEASURES]]
    object_header = ["Sequence", "J-Mean", "F-Mean"]
    object_rows = [[name, stats["J-Mean"], stats["F-Mean"]] for name, stats in statistics.items()]
    for name, header, rows in (("global_results", global_header, global_rows),
                               ("per-sequence_results", object_header, object_rows)):
        with atomic_file(args.results / f"{name}-{args.subset}.csv") as temporary:
            temporary.write_text(_official_csv(rows, header))
    if args.out:
        write_json(args.out, {
            "benchmark": f"davis{args.year}", "subset": args.subset,
            "davis_root": str(args.davis_root), "results": str(args.results),
            "global": measures,
            "per_object": {name: {"J-Mean": s["J-Mean"], "F-Mean": s["F-Mean"]} for name, s in statistics.items()},
            "per_object_statistics": statistics,
            "per_frame": {
                sequence.name: {
                    "frames": sequence.frames,
                    "J": {str(i + 1): row.tolist() for i, row in enumerate(sequence.j)},
                    "F": {str(i + 1): row.tolist() for i, row in enumerate(sequence.f)},
                }
                for sequence in sequences
            },
            "seconds": seconds, "versions": _versions(),
        })  # fmt: skip

    print(f"--------------------------- Global results for {args.subset} ---------------------------")
    print(_table(global_rows, global_header))
    print(f"\n---------- Per sequence results for {args.subset} ----------")
    print(_table(object_rows, object_header))
    print(f"\nTotal time: {seconds:.2f} s", file=sys.stderr)
    return 0


# --- JHMDB --------------------------------------------------------------------------------------


def jhmdb_clips(split: Path) -> list[tuple[str, str]]:
    """(action, clip) of every line of a JHMDB list file, from its joint_positions.mat path."""
    if not split.is_file():
        raise VcorrError(f"{split}: split list not found")
    clips = []
    for number, line in enumerate(split.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        mat = Path(line.split()[0])
        if mat.name != "joint_positions.mat" or len(mat.parts) < 3:
            raise VcorrError(f"{split}:{number}: expected '<...>/<action>/<clip>/joint_positions.mat <frames>'")
        clips.append((mat.parent.parent.name, mat.parent.name))
    return clips


def read_joint_positions(path: Path):
    """Ground-truth `[2, 15, T]` (x, y) of a clip, 0-based (JHMDB ships them 1-based)."""
    import scipy.io

    try:
        positions = scipy.io.loadmat(path)["pos_img"]
    except FileNotFoundError:
        raise VcorrError(f"{path}: missing") from None
    except KeyError:
        raise VcorrError(f"{path}: no 'pos_img' array") from None
    except (ValueError, TypeError, OSError) as error:
        raise VcorrError(f"{path}: unreadable .mat file ({error})") from None
    return positions - 1


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


def run_jhmdb(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vcorr.io import write_json
    from vcorr.metrics.pck import pck

    start = time.perf_counter()
    clips = jhmdb_clips(args.split)
    predictions, truths = [], []
    for action, clip in tqdm(clips, desc="score jhmdb", unit="clip"):
        gt = read_joint_positions(args.jhmdb_root / "joint_positions" / action / clip / "joint_positions.mat")
        predictions.append(read_predicted_coords(args.predictions / action / f"{clip}.npy", gt.shape[2], gt.shape[1]))
        truths.append(gt)
    scores = pck(predictions, truths)
    write_json(args.out, {
        "benchmark": "jhmdb", "split": str(args.split), "jhmdb_root": str(args.jhmdb_root),
        "predictions": str(args.predictions), "unit": "percent", "global": scores,
        "clips": [f"{action}/{clip}" for action, clip in clips],
        "seconds": time.perf_counter() - start, "versions": _versions(),
    })  # fmt: skip
    for name, value in scores.items():
        print(f"{name}: {value:.3f}")
    return 0


# --- VIP ----------------------------------------------------------------------------------------


def vip_frames(vip_root: Path, results: Path, video_list: Path):
    """(name, annotation ids, predicted ids) of every annotated frame of the listed videos."""
    from tqdm import tqdm

    from vcorr.io_png import read_ids

    if not video_list.is_file():
        raise VcorrError(f"{video_list}: video list not found")
    videos = [line.strip() for line in video_list.read_text().splitlines() if line.strip()]
    for video in tqdm(videos, desc="score vip", unit="video"):
        annotation_dir = vip_root / "Annotations" / "Category_ids" / video
        annotations = sorted(annotation_dir.glob("*.png"))
        if not annotations:
            raise VcorrError(f"{annotation_dir}: no annotations for video {video}")
        if not (results / video).is_dir():
            raise VcorrError(f"{results / video}: video {video} is missing from the results")
        for annotation in annotations:
            result = results / video / annotation.name
            yield str(result), read_ids(annotation), read_ids(result)


def run_vip(args: argparse.Namespace) -> int:
    from vcorr.io import write_json
    from vcorr.metrics.vip import miou

    start = time.perf_counter()
    video_list = args.list or args.vip_root / "lists" / "val_videos.txt"
    scores = miou(vip_frames(args.vip_root, args.results, video_list))
    write_json(args.out, {
        "benchmark": "vip", "vip_root": str(args.vip_root), "results": str(args.results),
        "list": str(video_list), "unit": "percent",
        "global": {"mIoU": scores["mIoU"]},
        "per_class_IoU": {str(index): value for index, value in enumerate(scores["per_class_IoU"])},
        "frames": scores["frames"], "confusion_matrix": scores["confusion_matrix"],
        "seconds": time.perf_counter() - start, "versions": _versions(),
    })  # fmt: skip
    print(f"mIoU: {scores['mIoU']:.3f}")
    return 0
