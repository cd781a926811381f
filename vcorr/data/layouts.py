"""Enumerate the frames of each evaluation benchmark from its official on-disk layout.

`benchmark_frames(benchmark, root)` is the one place that knows where every benchmark keeps its
sequence list, frames and labels. `root` is the dataset root as the official tools take it:

- davis17 / davis16 / davis17dev: the `DAVIS` folder (`JPEGImages/480p`, `Annotations/480p`,
  `ImageSets/2017/val.txt`, `ImageSets/2016/val.txt`, `ImageSets/2017/test-dev.txt`).
- ytvos18 / ytvos19: the `valid` folder (`JPEGImages/<vid>/*.jpg`, `Annotations/<vid>/*.png`
  holding first-appearance labels only, `meta.json`). The frames are those present in
  `JPEGImages`, so pointing `root` at `valid_all_frames` (with the `valid` annotations and meta
  copied in) gives every frame.
- jhmdb: the folder holding `Rename_Images/<action>/<clip>/%05d.png` and
  `joint_positions/<action>/<clip>/joint_positions.mat`; the val split is the project's copy of
  the seeds' `jhmdb_val_list.txt` (config/lists/). Sequences are named `<action>/<clip>`.
- vip: the `VIP_Fine` folder (`Images/<video>/*.jpg`, `Annotations/Category_ids/<video>/*.png`);
  the val videos come from `lists/val_videos.txt` when present, else the project's copy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from vcorr.errors import VcorrError
from vcorr.registry import config_dir

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


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise VcorrError(f"{path}: missing ({what})")
    return path


def _read_names(list_file: Path) -> list[str]:
    """Non-empty stripped lines of a plain list file, order kept."""
    _require(list_file, "sequence list")
    return [line.strip() for line in list_file.read_text().splitlines() if line.strip()]


def project_list(name: str) -> Path:
    """A list file the project ships in config/lists/."""
    return _require(config_dir() / "lists" / name, "list shipped with vcorr in config/lists")


def _png_if_present(folder: Path) -> Callable[[str], Path | None]:
    def annotation_of(stem: str) -> Path | None:
        candidate = folder / f"{stem}.png"
        return candidate if candidate.is_file() else None

    return annotation_of


def _davis_sequences(root: Path, image_set: str) -> list[_Sequence]:
    names = _read_names(root / "ImageSets" / image_set)
    images = _require(root / "JPEGImages" / "480p", "DAVIS frames folder")
    labels = root / "Annotations" / "480p"
    return [_Sequence(name, images / name, ".jpg", _png_if_present(labels / name)) for name in names]


def _ytvos_sequences(root: Path) -> list[_Sequence]:
    meta_file = _require(root / "meta.json", "YouTube-VOS meta file")
    try:
        videos = json.loads(meta_file.read_text())["videos"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise VcorrError(f"{meta_file}: not a YouTube-VOS meta.json with a 'videos' mapping ({error})") from None
    images = _require(root / "JPEGImages", "YouTube-VOS frames folder")
    labels = root / "Annotations"
    return [_Sequence(name, images / name, ".jpg", _png_if_present(labels / name)) for name in sorted(videos)]


def jhmdb_split_clips(list_file: Path) -> list[str]:
    """`<action>/<clip>` names of a seeds-format JHMDB split (`<mat path> <frames dir>` per line).

    The seeds prefix both paths with their own folder (e.g. `JHMDB/`); only the part from
    `Rename_Images/` on is kept, so the list works for any root.
    """
    clips = []
    for number, line in enumerate(_read_names(list_file), start=1):
        fields = line.split()
        frames_dir = fields[-1].rstrip("/")
        marker = "Rename_Images/"
        if marker not in frames_dir:
            raise VcorrError(f"{list_file}:{number}: expected '<mat path> <.../Rename_Images/<action>/<clip>>'")
        clips.append(frames_dir.split(marker, 1)[1])
    return clips


def _jhmdb_sequences(root: Path) -> list[_Sequence]:
    images = _require(root / "Rename_Images", "JHMDB frames folder")
    joints = _require(root / "joint_positions", "JHMDB joint positions folder")
    return [
        _Sequence(clip, images / clip, ".png", clip_annotation=joints / clip / "joint_positions.mat")
        for clip in jhmdb_split_clips(project_list("jhmdb_val_list.txt"))
    ]


def _vip_sequences(root: Path) -> list[_Sequence]:
    images = _require(root / "Images", "VIP frames folder")
    official = root / "lists" / "val_videos.txt"
    names = _read_names(official if official.is_file() else project_list("vip_val_videos.txt"))
    labels = root / "Annotations" / "Category_ids"
    return [_Sequence(name, images / name, ".jpg", _png_if_present(labels / name)) for name in names]


_BENCHMARKS: dict[str, Callable[[Path], list[_Sequence]]] = {
    "davis17": lambda root: _davis_sequences(root, "2017/val.txt"),
    "davis16": lambda root: _davis_sequences(root, "2016/val.txt"),
    "davis17dev": lambda root: _davis_sequences(root, "2017/test-dev.txt"),
    "ytvos18": _ytvos_sequences,
    "ytvos19": _ytvos_sequences,
    "jhmdb": _jhmdb_sequences,
    "vip": _vip_sequences,
}

BENCHMARKS: tuple[str, ...] = tuple(_BENCHMARKS)


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


def _sequences(benchmark: str, root: Path) -> list[_Sequence]:
    if benchmark not in _BENCHMARKS:
        raise VcorrError(f"unknown benchmark '{benchmark}' (known: {', '.join(BENCHMARKS)})")
    if not root.is_dir():
        raise VcorrError(f"{root}: missing ({benchmark} dataset root)")
    return _BENCHMARKS[benchmark](root)


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
