"""Enumerate the frames of each evaluation benchmark from its official on-disk layout.

`benchmark_frames(benchmark, root)` lists every benchmark's sequences, frames and labels,
dispatching on the `layout` of its config/benchmarks.yaml entry (the list files are read with
`vcorr.data.readers`). `root` is the dataset root as the official tools take it:

- davis: the `DAVIS` folder (`JPEGImages/480p`, `Annotations/480p`, `ImageSets/<year>/<subset>.txt`).
- ytvos: the `valid` folder (`JPEGImages/<vid>/*.jpg`, `Annotations/<vid>/*.png` holding
  first-appearance labels only, `meta.json`). The frames are those present in `JPEGImages`.
- jhmdb: the folder holding `Rename_Images/<action>/<clip>/%05d.png` and
  `joint_positions/<action>/<clip>/joint_positions.mat`; the clips are those of the benchmark's
  `video_list` inside the root when present, else of `split_list` (the seeds' `jhmdb_val_list.txt`).
  Sequences are named `<action>/<clip>`.
- vip: the `VIP_Fine` folder (`Images/<video>/*.jpg`, `Annotations/Category_ids/<video>/*.png`);
  the videos are those of `video_list` inside the root when present, else of `split_list`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from vcorr.data.benchmarks import Benchmark, benchmark
from vcorr.data.readers import (
    davis_image_set,
    jhmdb_joints_file,
    jhmdb_split_clips,
    read_names,
    require,
)
from vcorr.errors import VcorrError

COLUMNS = ["sequence", "frame", "image", "annotation", "height", "width"]


@dataclass(frozen=True)
class _Sequence:
    name: str
    frames_dir: Path
    image_suffix: str
    # Label file of a frame (by stem), or None when the frame has none.
    annotation_of: Callable[[str], Path | None] = lambda _stem: None
    # One label file for the whole clip (JHMDB's joint positions), required to exist.
    clip_annotation: Path | None = None

    def missing(self) -> list[Path]:
        """Paths this sequence needs that are absent."""
        needed = [self.frames_dir] + ([self.clip_annotation] if self.clip_annotation else [])
        return [path for path in needed if not path.exists()]


def _png_if_present(folder: Path) -> Callable[[str], Path | None]:
    def annotation_of(stem: str) -> Path | None:
        candidate = folder / f"{stem}.png"
        return candidate if candidate.is_file() else None

    return annotation_of


def _davis_sequences(root: Path, entry: Benchmark) -> list[_Sequence]:
    names = read_names(davis_image_set(root, entry.subset, entry.year))
    images = require(root / "JPEGImages" / "480p", "DAVIS frames folder")
    labels = root / "Annotations" / "480p"
    return [_Sequence(name, images / name, ".jpg", _png_if_present(labels / name)) for name in names]


def _ytvos_sequences(root: Path, entry: Benchmark) -> list[_Sequence]:
    meta_file = require(root / "meta.json", "YouTube-VOS meta file")
    try:
        videos = json.loads(meta_file.read_text())["videos"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise VcorrError(f"{meta_file}: not a YouTube-VOS meta.json with a 'videos' mapping ({error})") from None
    images = require(root / "JPEGImages", "YouTube-VOS frames folder")
    labels = root / "Annotations"
    return [_Sequence(name, images / name, ".jpg", _png_if_present(labels / name)) for name in sorted(videos)]


def _jhmdb_sequences(root: Path, entry: Benchmark) -> list[_Sequence]:
    images = require(root / "Rename_Images", "JHMDB frames folder")
    require(root / "joint_positions", "JHMDB joint positions folder")
    return [
        _Sequence(clip, images / clip, ".png", clip_annotation=jhmdb_joints_file(root, clip))
        for clip in jhmdb_split_clips(entry.sequence_list(root))
    ]


def _vip_sequences(root: Path, entry: Benchmark) -> list[_Sequence]:
    images = require(root / "Images", "VIP frames folder")
    names = read_names(entry.sequence_list(root))
    labels = root / "Annotations" / "Category_ids"
    return [_Sequence(name, images / name, ".jpg", _png_if_present(labels / name)) for name in names]


_LAYOUTS: dict[str, Callable[[Path, Benchmark], list[_Sequence]]] = {
    "davis": _davis_sequences,
    "ytvos": _ytvos_sequences,
    "jhmdb": _jhmdb_sequences,
    "vip": _vip_sequences,
}


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header only (PIL opens lazily, no pixel decoding)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as error:
        raise VcorrError(f"{path}: unreadable image ({error})") from None
    return height, width


def _frame_rows(sequence: _Sequence, with_sizes: bool) -> Iterable[list]:
    missing = sequence.missing()
    if missing:
        raise VcorrError(f"{missing[0]}: missing (needed by sequence '{sequence.name}')")
    frames = sorted(sequence.frames_dir.glob(f"*{sequence.image_suffix}"))
    if not frames:
        raise VcorrError(f"{sequence.frames_dir}: no *{sequence.image_suffix} frames (sequence '{sequence.name}')")
    for image in frames:
        annotation = sequence.clip_annotation or sequence.annotation_of(image.stem)
        height, width = image_size(image) if with_sizes else (0, 0)
        yield [sequence.name, image.stem, str(image), str(annotation) if annotation else "", height, width]


def _sequences(name: str, root: Path) -> list[_Sequence]:
    entry = benchmark(name)
    if not root.is_dir():
        raise VcorrError(f"{root}: missing ({name} dataset root)")
    return _LAYOUTS[entry.layout](root, entry)


def sequence_names(benchmark: str, root: Path) -> list[str]:
    """The benchmark's sequence list, in order, whether or not their files are present."""
    return [seq.name for seq in _sequences(benchmark, Path(root))]


def missing_sequences(benchmark: str, root: Path) -> dict[str, list[Path]]:
    """Listed sequences whose frames folder (or JHMDB joint file) is absent -> the missing paths."""
    return {seq.name: seq.missing() for seq in _sequences(benchmark, Path(root)) if seq.missing()}


def benchmark_frames(
    benchmark: str, root: Path, with_sizes: bool = True, skip_missing: bool = False
) -> pd.DataFrame:
    """One row per frame, sequences in list order and frames in temporal (name) order.

    Columns: sequence, frame (file stem), image (path), annotation (label file of that frame, ""
    when it has none; for JHMDB the clip's joint_positions.mat), height, width (0 when
    `with_sizes` is False, which skips reading the image headers). A listed sequence whose files
    are absent is an error, or left out with `skip_missing` (see `missing_sequences`).
    """
    sequences = _sequences(benchmark, Path(root))
    if skip_missing:
        sequences = [sequence for sequence in sequences if not sequence.missing()]
    rows = [row for sequence in sequences for row in _frame_rows(sequence, with_sizes)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({"height": "int64", "width": "int64"})
