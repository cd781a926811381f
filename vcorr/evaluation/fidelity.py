"""Fidelity to an original implementation's outputs, on any CPU (`vcorr fidelity`).

`compare_with_original` propagates a benchmark exactly as `vcorr propagate` does, with every
decision's margin recorded (`vcorr.propagation.margins`), reads the original's outputs for the
same sequences from a folder laid out like vcorr's predictions (`<sequence>/<frame>.png` id maps,
palette or greyscale; JHMDB `<action>/<clip>.npy` `[2, 15, T]` coordinates), and classifies
every differing pixel or joint by vcorr's own margins (`vcorr.propagation.fidelity`: equal, a
read-out or top-k near-tie within float rounding, downstream of an earlier near-tie, or a real
deviation). Faithful: no real deviation, and no more differing places than the cap.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vcorr.errors import VcorrError
from vcorr.propagation.fidelity import KINDS, FrameComparison, Tolerance


@dataclass
class SequenceFidelity:
    """One sequence's comparison: `frames` {frame name: FrameComparison}, places are `unit`."""

    sequence: str
    unit: str  # "pixels" or "joints"
    frames: dict[str, FrameComparison] = field(default_factory=dict)

    @property
    def counts(self) -> Counter:
        return sum((frame.counts for frame in self.frames.values()), Counter())

    @property
    def places(self) -> int:
        return sum(frame.places for frame in self.frames.values())

    @property
    def differing(self) -> int:
        return sum(frame.differing for frame in self.frames.values())

    def worst_fraction(self) -> float:
        """The cap's measure: for pixels the largest fraction of one frame's pixels that differ;
        for joints the fraction of the clip's joint-frames (a frame has only 15)."""
        if self.unit == "joints":
            return self.differing / max(self.places, 1)
        return max((frame.differing / frame.places for frame in self.frames.values()), default=0.0)

    def faithful(self, tolerance: Tolerance) -> bool:
        cap = tolerance.max_differing_joints if self.unit == "joints" else tolerance.max_differing
        return self.counts["real_deviation"] == 0 and self.worst_fraction() <= cap

    def as_dict(self, tolerance: Tolerance) -> dict:
        return {
            "sequence": self.sequence,
            "unit": self.unit,
            "frames": len(self.frames),
            "places": self.places,
            "differing": self.differing,
            "by_kind": {kind: self.counts[kind] for kind in KINDS},
            "worst_fraction": self.worst_fraction(),
            "faithful": self.faithful(tolerance),
            "per_frame": {name: {kind: frame.counts[kind] for kind in KINDS if frame.counts[kind]}
                          for name, frame in self.frames.items()},
            "real_deviations": {name: frame.where["real_deviation"][:20]
                                for name, frame in self.frames.items() if "real_deviation" in frame.where},
        }


def compare_with_original(
    benchmark: str,
    data_root: str | Path,
    method,
    original: str | Path,
    *,
    sequences: list[str] | None = None,
    weights_root: str | Path = Path("resources/data"),
    overrides: Sequence[str] = (),
    device: str = "cpu",
    tolerance: Tolerance = Tolerance(),
    predictions: str | Path | None = None,
) -> list[SequenceFidelity]:
    """Propagate (as `propagate_benchmark`, into `predictions` or a temporary folder) and compare
    every selected sequence with the original's outputs under `original`."""
    from vcorr.data.benchmarks import benchmark as benchmark_entry
    from vcorr.evaluation.pipeline import plan_run, propagate_benchmark, select_sequences

    original = Path(original)
    if not original.is_dir():
        raise VcorrError(f"{original}: missing (the original's outputs folder)")
    entry = benchmark_entry(benchmark)
    plans, listed = plan_run(entry, Path(data_root), sequences)
    for name in select_sequences(listed, sequences, None):
        for path in _output_files(plans[name], entry.task, original):
            if not path.is_file():
                raise VcorrError(f"{path}: missing (the original's output for sequence {name})")
    with tempfile.TemporaryDirectory(prefix="vcorr-fidelity-") as temporary:
        out = Path(predictions) if predictions is not None else Path(temporary)
        margins: dict = {}
        propagate_benchmark(benchmark, data_root, method, out, sequences=sequences, device=device,
                            weights_root=weights_root, overrides=overrides, force=True, margins=margins)
        return compare_predictions(benchmark, data_root, out, margins, original, tolerance)


def compare_predictions(
    benchmark: str, data_root: str | Path, predictions: str | Path, margins: dict, other: str | Path,
    tolerance: Tolerance = Tolerance(),
) -> list[SequenceFidelity]:
    """vcorr's `predictions` folder, made by `propagate_benchmark(..., margins=margins)`, against
    another folder of the same layout (an original's outputs, or another vcorr run), for every
    sequence in `margins`."""
    from vcorr.data.benchmarks import benchmark as benchmark_entry
    from vcorr.evaluation.pipeline import plan_run

    other = Path(other)
    if not other.is_dir():
        raise VcorrError(f"{other}: missing (the outputs to compare with)")
    entry = benchmark_entry(benchmark)
    plans, _ = plan_run(entry, Path(data_root), list(margins))
    return [
        _compare_sequence(plans[name], entry.task, recorder, Path(predictions), other, tolerance)
        for name, recorder in margins.items()
    ]


def _output_files(plan, task: str, folder: Path) -> list[Path]:
    if task == "jhmdb":
        return [folder / f"{plan.name}.npy"]
    return [folder / plan.name / f"{frame}.png" for frame in plan.written]


def _compare_sequence(plan, task: str, recorder, out: Path, original: Path, tolerance: Tolerance) -> SequenceFidelity:
    from vcorr.evaluation.scoring import read_predicted_coords
    from vcorr.io import read_index_png
    from vcorr.propagation.fidelity import classify_ids, classify_joints, joint_deltas, joint_maps, perturbation_bounds

    bounds = perturbation_bounds(recorder, tolerance.affinity)
    if task == "jhmdb":
        ours = np.load(out / f"{plan.name}.npy")
        theirs = read_predicted_coords(original / f"{plan.name}.npy", ours.shape[2], ours.shape[1])
        result = SequenceFidelity(plan.name, "joints")
        for t, frame in enumerate(plan.frames):
            result.frames[frame] = classify_joints(
                joint_maps(recorder, t), ours[..., t], theirs[..., t], joint_deltas(recorder, bounds, t), tolerance
            )
        return result
    result = SequenceFidelity(plan.name, "pixels")
    for frame, path in zip(plan.written, _output_files(plan, task, original)):
        ours = read_index_png(out / plan.name / f"{frame}.png")
        theirs = read_index_png(path)
        if theirs.shape != ours.shape:
            raise VcorrError(f"{path}: size {theirs.shape}, vcorr's output is {ours.shape}")
        result.frames[frame] = classify_ids(recorder, plan.frames.index(frame), ours, theirs, bounds, tolerance)
    return result


def fidelity_table(results: list[SequenceFidelity], tolerance: Tolerance) -> str:
    """One line per sequence: frames, places, differing places by kind, the cap's measure."""
    kinds = KINDS[1:]
    header = f"{'sequence':40s} {'frames':>6s} {'places':>9s} {'differ':>6s} " + " ".join(f"{k:>17s}" for k in kinds)
    lines = [header + "  worst   faithful"]
    for result in results:
        counts = result.counts
        lines.append(
            f"{result.sequence[-40:]:40s} {len(result.frames):6d} {result.places:9d} {result.differing:6d} "
            + " ".join(f"{counts[k]:17d}" for k in kinds)
            + f"  {100 * result.worst_fraction():5.3f}%  {'yes' if result.faithful(tolerance) else 'NO'}"
        )
    return "\n".join(lines)
