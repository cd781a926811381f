"""vcorr's predictions of a released model against the masks its authors released
(`results/<benchmark>/<method>.agreement.json`, config/published.yaml `masks`).

Per sequence of the benchmark's list and per frame vcorr predicted, the pixel agreement: the share
of pixels whose label id is the same in both PNGs (ids as stored, at the annotation's size; frame
0 included). Then J&F of both folders by vcorr's DAVIS scorer (`vcorr.metrics.davis`, the code of
`vcorr score davis`), and their difference. A frame the authors did not release is listed as
missing, not counted; sizes that differ are an error naming both files.

The authors' folder holds `<sequence>/<frame>.png` (DAVIS's results layout; HVC's infer_vos.py
writes `<sequence>/<frame>.png` into its `*_vos` folder). When a sequence is not there, the error
names the folders under it that do hold the sequence, so that published.yaml's `root` can be set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vcorr.errors import VcorrError

HEADLINE = ("J&F-Mean", "J-Mean", "F-Mean")
SEARCH_DEPTH = 4  # how deep below the masks folder the sequences are looked for, for the error


def _holding(masks: Path, sequence: str) -> list[str]:
    """Folders up to SEARCH_DEPTH below `masks` that hold a `<sequence>/` folder of PNGs."""
    found = []
    for depth in range(1, SEARCH_DEPTH + 1):
        for candidate in sorted(masks.glob("/".join(["*"] * depth))):
            if candidate.name == sequence and candidate.is_dir() and any(candidate.glob("*.png")):
                found.append(str(candidate.parent.relative_to(masks)))
    return found


def _check_masks(masks: Path, sequences: list[str]) -> None:
    missing = [sequence for sequence in sequences if not (masks / sequence).is_dir()]
    if not missing:
        return
    holding = _holding(masks, missing[0])
    hint = (f"folders under it that hold the sequences: {', '.join(holding)} (set published.yaml `masks` root to one)"
            if holding else "no folder under it holds them")
    raise VcorrError(f"{masks / missing[0]}: sequence {missing[0]} is missing from the authors' masks "
                     f"({len(missing)} of {len(sequences)} sequences missing); {hint}")


def frame_agreement(ours: Path, theirs: Path) -> tuple[int, int]:
    """(pixels with the same id, pixels) of two label PNGs of one frame."""
    from vcorr.io_png import read_ids

    a, b = read_ids(ours), read_ids(theirs)
    if a.shape != b.shape:
        raise VcorrError(f"{theirs}: {b.shape[1]}x{b.shape[0]}, but vcorr's {ours} is {a.shape[1]}x{a.shape[0]}")
    return int(np.count_nonzero(a == b)), a.size


def _scores(data_root: Path, folder: Path, subset: str, year: int, jobs: int) -> tuple[dict, dict]:
    """(global measures, per-object J-Mean / F-Mean) of `folder` by vcorr's DAVIS scorer."""
    from vcorr.metrics import davis

    statistics = davis.per_object_statistics(davis.evaluate(data_root, folder, subset, year, jobs))
    measures = davis.global_measures(statistics)
    return ({name: measures[name] for name in HEADLINE},
            {name: {"J-Mean": stats["J-Mean"], "F-Mean": stats["F-Mean"]} for name, stats in statistics.items()})


def agreement_report(benchmark: str, data_root: Path, predictions: Path, masks: Path, method: str,
                     jobs: int = 1) -> dict[str, Any]:
    """The agreement JSON (see the module docstring)."""
    from tqdm import tqdm

    from vcorr.config import registry_entry
    from vcorr.io import require_folder
    from vcorr.metrics.davis import sequence_names

    entry = registry_entry("benchmarks", benchmark)
    if entry["scorer"] != "davis":
        raise VcorrError(f"benchmark {benchmark} is scored by {entry['scorer']}: the agreement is defined for DAVIS's label maps")
    data_root, predictions, masks = Path(data_root), Path(predictions), Path(masks)
    require_folder(predictions, "--predictions")
    require_folder(masks, "--masks")
    sequences = sequence_names(data_root, entry["subset"], entry["year"])
    _check_masks(masks, sequences)
    per_sequence, same_total, pixels_total, frames, missing_total = {}, 0, 0, 0, 0
    lowest = None
    for sequence in tqdm(sequences, desc="agreement", unit="sequence"):
        ours = sorted((predictions / sequence).glob("*.png"))
        if not ours:
            raise VcorrError(f"{predictions / sequence}: no predicted frames of sequence {sequence}")
        values, missing, same_sequence, pixels_sequence = {}, [], 0, 0
        for path in ours:
            theirs = masks / sequence / path.name
            if not theirs.is_file():
                missing.append(path.stem)
                continue
            same, pixels = frame_agreement(path, theirs)
            values[path.stem] = same / pixels
            same_sequence, pixels_sequence = same_sequence + same, pixels_sequence + pixels
            if lowest is None or values[path.stem] < lowest["agreement"]:
                lowest = {"sequence": sequence, "frame": path.stem, "agreement": values[path.stem]}
        per_sequence[sequence] = {"agreement": same_sequence / pixels_sequence if pixels_sequence else None,
                                  "frames": values, "missing": missing}
        same_total, pixels_total = same_total + same_sequence, pixels_total + pixels_sequence
        frames, missing_total = frames + len(values), missing_total + len(missing)
    if not frames:
        raise VcorrError(f"{masks}: none of vcorr's predicted frames has a mask of the authors")
    ours_scores, ours_objects = _scores(data_root, predictions, entry["subset"], entry["year"], jobs)
    theirs_scores, theirs_objects = _scores(data_root, masks, entry["subset"], entry["year"], jobs)
    return {
        "benchmark": benchmark,
        "method": method,
        "predictions": str(predictions),
        "masks": str(masks),
        "agreement": same_total / pixels_total,
        "frames": frames,
        "frames_missing": missing_total,
        "lowest": lowest,
        "scores": {"vcorr": ours_scores, "authors": theirs_scores,
                   "difference": {name: ours_scores[name] - theirs_scores[name] for name in HEADLINE}},
        "per_object": {name: {"vcorr": ours_objects[name], "authors": theirs_objects[name]} for name in ours_objects},
        "per_sequence": per_sequence,
    }


def write_agreement(out: Path, **kwargs: Any) -> dict[str, Any]:
    from vcorr.io import write_json

    report = agreement_report(**kwargs)
    write_json(out, report)
    return report
