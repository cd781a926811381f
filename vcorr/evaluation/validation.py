"""Scores during training: a few sequences of a validation benchmark propagated and scored from a
model's current weights, by the pipeline and scorers every evaluation uses.

`vcorr train` (vcorr/commands/train.py) builds a `Validator` from the training config's `eval_*`
keys and gives it to `vcorr.train.loop.train` as `validate`: training sits beside evaluation and
does not import it, so the loop only exports the model at each validation step (in its method's
export format, to a file) and calls `validator(export, step, device)`. Validation therefore sees
exactly what that export would give in `vcorr propagate`, and never touches the training model.

- The benchmark must have role `validation` in config/benchmarks.yaml (e.g. `davis17_train`, the
  demo's `demo_davis_train`). An evaluation benchmark, a test split whose scores are reported, is
  refused: a model is never selected on the data it is reported on. A validation benchmark is
  propagated with each method's settings for its `settings_from` benchmark.
- The method (a methods.yaml name or a method YAML file) is the one that evaluates the trained
  model: its encoder whose weights are a file (`path`, e.g. `results/models/<model>.pth`) reads
  the export instead; registry weights (HVC's fused MoCo v1) stay as they are.
- Work per call: the selected `sequences` (all of the list when None; at most `MAX_SEQUENCES`, so a
  validation costs minutes at most and never a benchmark's worth) propagated into
  `<folder>/predictions` (replaced each time) and scored into `<folder>/scores.json`, shown as one
  progress line. Returns the scorer's headline measures (`vcorr.evaluation.scoring.HEADLINES`);
  `metric`, the first of them, ranks checkpoints.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vcorr.errors import VcorrError

MAX_SEQUENCES = 8

class Validator:
    """`validator(export, step, device)` -> the headline scores of the model exported to `export`."""

    def __init__(self, benchmark: str, method: str | Path, data_root: str | Path, folder: str | Path, *,
                 sequences: Sequence[str] | None = None, weights_root: str | Path = "resources/data") -> None:
        from vcorr.data.benchmarks import benchmark as benchmark_entry
        from vcorr.data.layouts import sequence_names
        from vcorr.evaluation.methods import load_method
        from vcorr.evaluation.scoring import HEADLINES
        from vcorr.io import require_folder

        entry = benchmark_entry(benchmark)
        if entry.role != "validation":
            raise VcorrError(f"eval_benchmark: '{benchmark}' has role '{entry.role}' in config/benchmarks.yaml: its "
                             "scores are reported, so training never reads it; validate on a benchmark of role "
                             "validation (e.g. davis17_train)")
        if entry.scorer not in HEADLINES:
            raise VcorrError(f"eval_benchmark: '{benchmark}' is scored by '{entry.scorer}', not locally")
        self.method = load_method(method)
        self.method.settings_for(entry.settings_name)  # refused now, not at the first validation
        trained = [index for index, encoder in enumerate(self.method.encoders) if encoder.weights and encoder.weights.path]
        if len(trained) != 1:
            raise VcorrError(f"eval_method: '{self.method.name}' ({self.method.source}) must read exactly one trained "
                             f"model's file (weights: {{path: ...}}), it reads {len(trained)}")
        self.trained_encoder = trained[0]
        self.data_root = require_folder(Path(data_root), "eval_data_root")
        listed = sequence_names(entry.name, self.data_root)
        unknown = sorted(set(sequences or ()) - set(listed))
        if unknown:
            raise VcorrError(f"eval_sequences: not in {entry.name}'s list under {self.data_root}: {', '.join(unknown)}")
        if len(sequences or listed) > MAX_SEQUENCES:
            raise VcorrError(f"eval_sequences: {len(sequences or listed)} sequences of {entry.name} to score at every "
                             f"validation; name at most {MAX_SEQUENCES} (e.g. eval_sequences=[{', '.join(listed[:3])}])")
        self.entry = entry
        self.sequences = list(sequences) if sequences else None
        self.weights_root = Path(weights_root)
        self.folder = Path(folder)
        self.measures = HEADLINES[entry.scorer]
        self.metric = self.measures[0]

    @property
    def identity(self) -> dict[str, Any]:
        """What the scores measure: scores of one identity compare, of two do not."""
        return {"benchmark": self.entry.name, "method": self.method.name, "sequences": self.sequences,
                "metric": self.metric}

    def method_reading(self, export: Path):
        """The method with its trained encoder reading `export`."""
        encoders = list(self.method.encoders)
        trained = encoders[self.trained_encoder]
        encoders[self.trained_encoder] = dataclasses.replace(
            trained, weights=dataclasses.replace(trained.weights, path=str(export)))
        features = dataclasses.replace(self.method.features, encoders=tuple(encoders))
        return dataclasses.replace(self.method, features=features)

    def __call__(self, export: str | Path, step: int, device: str = "auto") -> dict[str, float]:
        from tqdm import tqdm

        from vcorr.evaluation.pipeline import propagate_benchmark

        predictions = self.folder / "predictions"
        shutil.rmtree(predictions, ignore_errors=True)
        with tqdm(desc=f"validate step {step} on {self.entry.name}", unit="frame", file=sys.stderr, leave=False,
                  dynamic_ncols=True) as progress:
            propagate_benchmark(self.entry.name, self.data_root, self.method_reading(Path(export)), predictions,
                                sequences=self.sequences, device=device, weights_root=self.weights_root,
                                progress=progress)
            scores = self._score(predictions)
        return {name: float(scores[name]) for name in self.measures}

    def _score(self, predictions: Path) -> dict[str, float]:
        from vcorr.evaluation import scoring

        out, entry = self.folder / "scores.json", self.entry
        if entry.scorer == "davis":
            return scoring.score_davis(self.data_root, predictions, out, entry.subset, entry.year, jobs=1,
                                       csv_dir=self.folder, sequences=self.sequences, verbose=False)
        listed = entry.sequence_list(self.data_root)
        score = {"jhmdb": scoring.score_jhmdb, "vip": scoring.score_vip}[entry.scorer]
        return score(self.data_root, predictions, listed, out, sequences=self.sequences, verbose=False)
