"""`vcorr data index`: one table per registry entry, checked against the expected counts.

Datasets give one row per frame (columns `INDEX_COLUMNS`: the split, the benchmark_frames
columns, and `objects`, the sequence's number of labelled objects where the benchmark defines
one); weights give one row per file (`WEIGHT_COLUMNS`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from vcorr.data.benchmarks import benchmark
from vcorr.data.layouts import COLUMNS, benchmark_frames, image_size, missing_sequences
from vcorr.data.datasets import dataset
from vcorr.errors import VcorrError
from vcorr.io import atomic_file, read_index_png

INDEX_COLUMNS = ["split", *COLUMNS, "objects"]
WEIGHT_COLUMNS = ["split", "file", "path", "bytes"]

@dataclass
class IndexReport:
    table: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def _count_objects(labels: list[str], counting: str) -> int:
    """Counting (benchmarks.yaml `objects`): the ids of the first label file (DAVIS gives every
    object there), those merged into one (DAVIS-2016), or the ids over all the label files
    (YouTube-VOS labels each object on its first appearance)."""
    files = [label for label in labels if label]
    if counting != "all":
        files = files[:1]
    ids = set()
    for label in files:
        ids.update(int(value) for value in np.unique(read_index_png(label)) if value)
    return min(len(ids), 1) if counting == "merged" else len(ids)


def _benchmark_part(name: str, data_folder: Path, with_sizes: bool) -> tuple[pd.DataFrame, list[str]]:
    entry = benchmark(name)
    root = Path(data_folder) / entry.root
    missing = missing_sequences(name, root)
    problems = []
    if missing:
        names = list(missing)
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        first_path = missing[names[0]][0]
        problems.append(f"{len(names)} listed sequences missing ({first_path} absent, ...): "
                        f"{', '.join(names[:10])}{more}")
    table = benchmark_frames(name, root, with_sizes=with_sizes, skip_missing=True)
    counting = entry.objects
    if counting:
        objects = table.groupby("sequence", sort=False)["annotation"].agg(lambda labels: _count_objects(list(labels), counting))
        table["objects"] = table.sequence.map(objects).astype("Int64")
    else:
        table["objects"] = pd.Series(pd.NA, index=table.index, dtype="Int64")
    return table, problems


def _images_part(folder: Path, pattern: str, with_sizes: bool) -> pd.DataFrame:
    images = sorted(folder.glob(pattern))
    rows = []
    for image in tqdm(images, desc=f"index {pattern}", unit="image", file=sys.stderr, disable=len(images) < 1000):
        height, width = image_size(image) if with_sizes else (0, 0)
        rows.append([image.parent.name, image.stem, str(image), "", height, width])
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"height": "int64", "width": "int64"})
    table["objects"] = pd.Series(pd.NA, index=table.index, dtype="Int64")
    return table


def _count_problems(split: str, table: pd.DataFrame, expect: dict) -> list[str]:
    found = {
        "sequences": table.sequence.nunique(),
        "frames": len(table),
        "objects": int(table.drop_duplicates("sequence").objects.sum()) if "objects" in table else 0,
    }
    unknown = set(expect) - set(found)
    if unknown:
        raise VcorrError(f"config/datasets.yaml: split {split}: unknown expected counts {sorted(unknown)}")
    return [f"{split}: {found[key]} {key}, expected {value}" for key, value in expect.items() if found[key] != value]


def build_index(dataset_id: str, data_dir: Path, with_sizes: bool = True) -> IndexReport:
    entry = dataset(dataset_id)
    folder = Path(data_dir) / entry.id
    if not folder.is_dir():
        raise VcorrError(f"{folder}: missing: run `vcorr data extract {dataset_id}` first")
    parts, problems = [], []
    for split, spec in entry.index.items():
        if "files" in spec:
            paths = [folder / name for name in spec["files"]]
            problems += [f"{split}: {path} missing" for path in paths if not path.is_file()]
            table = pd.DataFrame(
                [[split, path.name, str(path), path.stat().st_size] for path in paths if path.is_file()],
                columns=WEIGHT_COLUMNS,
            )
        else:
            if "benchmark" in spec:
                table, missing = _benchmark_part(spec["benchmark"], folder, with_sizes)
                problems += [f"{split}: {problem}" for problem in missing]
            else:
                table = _images_part(folder, spec["images"], with_sizes)
            problems += _count_problems(split, table, spec.get("expect", {}))
            table.insert(0, "split", split)
        parts.append(table)
    return IndexReport(pd.concat(parts, ignore_index=True), problems)


def read_index(path: Path) -> pd.DataFrame:
    """An index CSV with its text columns kept as text (frame stems like "00000" stay strings)."""
    text = {"split": str, "sequence": str, "frame": str, "image": str, "annotation": str, "file": str, "path": str}
    try:
        return pd.read_csv(path, dtype=text, keep_default_na=False, na_values={"objects": [""]})
    except FileNotFoundError:
        raise VcorrError(f"{path}: missing: run `vcorr data index` first") from None


def write_index(dataset_id: str, data_dir: Path, out: Path, allow_partial: bool = False, with_sizes: bool = True) -> IndexReport:
    """Build the index and write it atomically to `out` (CSV) unless counts fail (see allow_partial)."""
    report = build_index(dataset_id, data_dir, with_sizes)
    if report.problems and not allow_partial:
        raise VcorrError(f"{dataset_id} is incomplete under {Path(data_dir) / dataset_id}:\n  "
                         + "\n  ".join(report.problems) + "\n(--allow-partial writes the index anyway)")
    for problem in report.problems:
        print(f"warning: {dataset_id}: {problem}", file=sys.stderr)
    with atomic_file(out) as temporary:
        report.table.to_csv(temporary, index=False)
    return report
