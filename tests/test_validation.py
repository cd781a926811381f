"""Scores during training (vcorr.evaluation.validation, `vcorr train --set eval_every=N`): the
validation split only (never a test split's files), the training run unchanged by it, its history
carried through a resume, a model that does not learn reported as not improving, `select: best`.

The data: a tiny DAVIS-2017 root holding a train split (the validation benchmark
`demo_davis_train` reads it) and a val split (the evaluation target); HVC trains on random images
at 32 px."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from train_fixtures import assert_identical, one_thread, run_train, write_images  # noqa: F401
from vcorr.errors import VcorrError
from vcorr.io import write_index_png

TRAIN = ("walk-a", "walk-b")  # the train split: what validation reads
VAL = "held-out"  # the val split: an evaluation target, never read while training
SIZE, FRAMES = 64, 4


def _sequence(root: Path, name: str, seed: int) -> None:
    """A textured square moving 3 px a frame over a textured background, annotated on every frame."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (SIZE, SIZE + 3 * FRAMES, 3), dtype=np.uint8)
    square = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    for t in range(FRAMES):
        frame = background[:, 3 * t : 3 * t + SIZE].copy()
        ids = np.zeros((SIZE, SIZE), np.uint8)
        frame[20:40, 10 + 3 * t : 30 + 3 * t] = square
        ids[20:40, 10 + 3 * t : 30 + 3 * t] = 1
        path = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path, quality=95)
        write_index_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", ids)


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("validation") / "DAVIS"
    for seed, name in enumerate((*TRAIN, VAL)):
        _sequence(root, name, seed)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("".join(f"{name}\n" for name in TRAIN))
    (root / "ImageSets" / "2017" / "val.txt").write_text(f"{VAL}\n")
    return root


@pytest.fixture(scope="module")
def method_file(davis) -> Path:
    """HVC's test-time encoder reading the model being trained (the file validation substitutes)."""
    path = davis.parent / "method.yaml"
    path.write_text(yaml.safe_dump({
        "encoders": [{"arch": "hvc_r18", "weights": {"path": "results/models/tiny.pth", "format": "vcorr"}}],
        "fusion": None, "input": "imagenet_rgb", "protocol": "crw",
        "benchmarks": {"demo_davis": {"cxt_size": 2, "radius": 4, "topk": 5, "temp": 0.05, "size": None}},
    }))
    return path


def validation_sets(davis: Path, method_file: Path, every: int = 2) -> list[str]:
    return [f"eval_every={every}", "eval_benchmark=demo_davis_train", f"eval_method={method_file}",
            f"eval_data_root={davis}"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def validated(workdir: Path) -> dict[int, float]:
    """{step: J&F} of the validation rows of a work dir's metrics.csv."""
    return {int(row["step"]): float(row["val/J&F-Mean"]) for row in _rows(workdir / "metrics.csv")
            if row.get("val/J&F-Mean")}


@pytest.mark.parametrize("target", ["demo_davis", "davis17"])
def test_an_evaluation_benchmark_is_refused(target, davis, method_file, tmp_path):
    from vcorr.evaluation.validation import Validator

    with pytest.raises(VcorrError, match=f"'{target}' has role 'evaluation'.*never reads it"):
        Validator(target, method_file, davis, tmp_path)
    # From the command line: refused before any step, with the key named.
    index = write_images(tmp_path / "images", 4, square=32)
    sets = ["eval_every=2", f"eval_benchmark={target}", f"eval_method={method_file}", f"eval_data_root={davis}"]
    result = run_train(index, tmp_path / "work", tmp_path / "out.pth", *sets)
    assert result.returncode != 0 and "eval_benchmark" in result.stderr
    assert not (tmp_path / "work" / "checkpoint.pt").exists()


def test_a_validation_is_a_few_sequences(method_file, tmp_path):
    from vcorr.evaluation.validation import MAX_SEQUENCES, Validator

    root = tmp_path / "DAVIS"  # a list only: validation checks it before reading any frame
    for folder in ("ImageSets/2017", "JPEGImages/480p", "Annotations/480p"):
        (root / folder).mkdir(parents=True)
    names = [f"walk-{index}" for index in range(MAX_SEQUENCES + 1)]
    (root / "ImageSets" / "2017" / "train.txt").write_text("".join(f"{name}\n" for name in names))
    with pytest.raises(VcorrError, match=f"{MAX_SEQUENCES + 1} sequences of demo_davis_train.*at most {MAX_SEQUENCES}"):
        Validator("demo_davis_train", method_file, root, tmp_path / "validation")
    with pytest.raises(VcorrError, match="eval_sequences: not in demo_davis_train's list.*: bear"):
        Validator("demo_davis_train", method_file, root, tmp_path / "validation", sequences=["walk-0", "bear"])
    assert Validator("demo_davis_train", method_file, root, tmp_path / "validation", sequences=names[:2]).identity == {
        "benchmark": "demo_davis_train", "method": "method", "sequences": names[:2], "metric": "J&F-Mean"}


def test_validation_never_reads_the_test_split(davis, method_file, tmp_path):
    """Every file and folder validation opens or lists, recorded by an audit hook: the train
    split's, none of the val split's (its frames, labels or list)."""
    from vcorr.evaluation.validation import Validator
    from vcorr.models import build_encoder
    from vcorr.models.weights import save_weights

    torch.manual_seed(0)
    export = tmp_path / "export.pth"
    save_weights(build_encoder("hvc_r18"), export)
    validator = Validator("demo_davis_train", method_file, davis, tmp_path / "validation")
    touched: list[str] = []
    recording = [True]

    def record(event: str, args: tuple) -> None:
        if recording[0] and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, Path)):
            touched.append(str(args[0]))

    sys.addaudithook(record)  # hooks cannot be removed: this one stops recording after the call
    try:
        scores = validator(export, step=0, device="cpu")
    finally:
        recording[0] = False
    assert set(scores) == {"J&F-Mean", "J-Mean", "F-Mean"}
    under_root = [path for path in touched if path.startswith(str(davis))]
    assert any(f"/{TRAIN[1]}/" in path for path in under_root), "the audit hook saw no frame of the train split"
    assert not [path for path in under_root if VAL in path or path.endswith("val.txt")]
    scored = yaml.safe_load((tmp_path / "validation" / "scores.json").read_text())["per_object"]
    assert sorted(scored) == [f"{name}_1" for name in TRAIN]


@pytest.mark.slow
def test_validation_leaves_training_bit_identical_and_its_history_resumes(davis, method_file, tmp_path):
    index = write_images(tmp_path / "images", 8, square=32)
    plain = run_train(index, tmp_path / "plain", tmp_path / "plain.pth", "max_steps=4")
    assert plain.returncode == 0, plain.stderr
    # Validated at steps 0, 2, 4, in two runs: 2 steps, then resumed to 4 (max_steps may change).
    sets = validation_sets(davis, method_file)
    first = run_train(index, tmp_path / "validated", tmp_path / "validated.pth", "max_steps=2", *sets)
    assert first.returncode == 0, first.stderr
    second = run_train(index, tmp_path / "validated", tmp_path / "validated.pth", "max_steps=4", "select=best", *sets)
    assert second.returncode == 0, second.stderr
    assert "resumed at step 2" in second.stdout and "best validation J&F-Mean" in second.stdout

    plain_state = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=False)
    state = torch.load(tmp_path / "validated" / "checkpoint.pt", weights_only=False)
    for part in ("model", "optimizer", "rng"):
        assert_identical(plain_state[part], state[part])
    history = state["validation"]["history"]
    assert [entry["step"] for entry in history] == [0, 2, 4]
    scores = validated(tmp_path / "validated")
    assert scores == {entry["step"]: entry["scores"]["J&F-Mean"] for entry in history}
    best_step = max(scores, key=lambda step: (scores[step], -step))
    assert state["validation"]["best"] == {"step": best_step, "score": scores[best_step]}
    # select=best: --out is the best validated export, and says so.
    exported = torch.load(tmp_path / "validated.pth", weights_only=False)
    assert exported["meta"]["selection"] == "best" and exported["meta"]["steps"] == best_step
    assert exported["meta"]["validation"]["scores"]["J&F-Mean"] == scores[best_step]
    assert_identical(exported, torch.load(tmp_path / "validated" / "best.pth", weights_only=False))


@pytest.mark.slow
def test_a_model_that_does_not_learn_is_reported_flat(davis, method_file, tmp_path):
    """lr 0: the weights never move (the export keeps the initialisation's), and validation
    reports no improvement. Only the BatchNorm running statistics change, by the train-mode
    forwards: the first validation after step 0 sees them settled on the training crops, and from
    there the score stays flat."""
    index = write_images(tmp_path / "images", 8, square=32)
    out, init = tmp_path / "out.pth", tmp_path / "init.pth"
    result = run_train(index, tmp_path / "work", out, "lr=0", "max_steps=6", *validation_sets(davis, method_file),
                       flags=("--init-out", str(init)))
    assert result.returncode == 0, result.stderr
    trained, initial = (torch.load(path, weights_only=False)["encoder"] for path in (out, init))
    moved = [key for key in initial if "running_" not in key and "num_batches" not in key
             and not torch.equal(initial[key], trained[key])]
    assert not moved, moved
    scores = validated(tmp_path / "work")
    assert sorted(scores) == [0, 2, 4, 6]
    settled = [scores[step] for step in (2, 4, 6)]
    assert max(settled) - min(settled) < 0.02, scores


def test_every_validation_split_takes_an_evaluation_splits_settings():
    """A validation benchmark is propagated as its `settings_from` evaluation benchmark is: the same
    dataset, layout, task and scorer; no method lists it, so `evaluate: all` never reports it."""
    from vcorr.config import load_registry
    from vcorr.data.benchmarks import benchmark

    registry = load_registry("benchmarks")
    validation = [name for name, entry in registry.items() if entry.get("role") == "validation"]
    assert {"davis17_train", "demo_davis_train"} <= set(validation)
    for name in validation:
        entry, source = benchmark(name), benchmark(registry[name]["settings_from"])
        assert source.role == "evaluation" and source.settings_name == source.name
        assert (entry.dataset, entry.layout, entry.task, entry.scorer) == (source.dataset, source.layout, source.task, source.scorer)
        assert entry.subset != source.subset
        assert not [method for method, data in load_registry("methods").items() if name in data["benchmarks"]]
