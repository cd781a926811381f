"""Trust on a shared cluster (issue 10): what a run reuses, what the DAG refuses, what is checked
before anything is written.

- propagation reuses a folder's predictions only when its run record matches this run: method,
  settings, the sha256 of every checkpoint, the vcorr version and the prediction code;
- config `propagation.set` and the targets are checked when the DAG is built (`snakemake -n`);
- the CLI's refusals come before any output, with what is wrong named.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from test_propagate_cli import make_davis, texture, two_bands
from test_workflow import REPO, registry, registry_copy, snakemake
from vcorr.cli import build_parser, main
from vcorr.io import sha256_file


@pytest.fixture()
def davis(tmp_path) -> Path:
    return make_davis(
        tmp_path / "DAVIS",
        {"still": [texture(1)] * 3, "moving": [np.roll(texture(2), 2 * t, axis=1) for t in range(3)], "third": [texture(3)] * 2},
        {"still": two_bands(), "moving": two_bands(), "third": two_bands()},
    )


def weights_root(folder: Path, seed: int) -> Path:
    """`<folder>/enc/crw_r18.pth`: a vcorr checkpoint of a crw_r18 encoder initialised from `seed`."""
    from vcorr.models import build_encoder
    from vcorr.models.weights import save_weights

    torch.manual_seed(seed)
    save_weights(build_encoder("crw_r18"), folder / "enc" / "crw_r18.pth")
    return folder


@pytest.fixture()
def method_file(tmp_path) -> Path:
    """random_r18's settings with a checkpoint read from `<weights root>/enc/crw_r18.pth`."""
    entry = registry("methods")["random_r18"]
    entry["encoders"] = [{"arch": "crw_r18", "weights": {"id": "enc", "file": "crw_r18.pth", "format": "vcorr"}}]
    path = tmp_path / "crw_weights.yaml"
    path.write_text(yaml.safe_dump(entry))
    return path


def propagate(davis: Path, out: Path, *extra: str, method: str | Path = "random_r18") -> int:
    return main(["propagate", "--benchmark", "davis17", "--data-root", str(davis), "--out", str(out),
                 "--method-config", str(method), "--device", "cpu", *extra])


def png_mtimes(out: Path) -> dict[str, int]:
    return {str(path.relative_to(out)): path.stat().st_mtime_ns for path in sorted(out.glob("*/*.png"))}


# --- point 2: the run record ---------------------------------------------------------------------


def test_a_folder_made_with_other_weights_is_refused_naming_them_and_redone_with_force(davis, tmp_path, method_file, capsys):
    first, second = weights_root(tmp_path / "w1", 1), weights_root(tmp_path / "w2", 2)
    out = tmp_path / "pred"
    assert propagate(davis, out, "--weights-root", str(first), method=method_file) == 0
    before = png_mtimes(out)
    capsys.readouterr()

    # Same method and settings, another checkpoint: refused, the difference named, nothing touched.
    assert propagate(davis, out, "--weights-root", str(second), method=method_file) == 2
    error = capsys.readouterr().err
    old, new = sha256_file(first / "enc" / "crw_r18.pth"), sha256_file(second / "enc" / "crw_r18.pth")
    record = json.loads((out / ".vcorr-propagate.json").read_text())
    assert record["weights"] == [{"file": str(first / "enc" / "crw_r18.pth"), "sha256": old}]
    assert f'weights.0: "{old[:12]}..." -> "{new[:12]}..."' in error, error
    assert str(second / "enc" / "crw_r18.pth") in error and "--force" in error
    assert png_mtimes(out) == before

    # The same checkpoint copied elsewhere is the same weights: complete sequences are kept.
    copy = tmp_path / "w1copy"
    shutil.copytree(first, copy)
    assert propagate(davis, out, "--weights-root", str(copy), method=method_file) == 0
    assert png_mtimes(out) == before

    assert propagate(davis, out, "--weights-root", str(second), "--force", method=method_file) == 0
    after = png_mtimes(out)
    assert after.keys() == before.keys() and all(after[name] != before[name] for name in before)
    assert json.loads((out / ".vcorr-propagate.json").read_text())["weights"][0]["sha256"] == new


def test_force_on_some_sequences_deletes_every_prediction_made_otherwise(davis, tmp_path, method_file):
    first, second = weights_root(tmp_path / "w1", 1), weights_root(tmp_path / "w2", 2)
    out = tmp_path / "pred"
    assert propagate(davis, out, "--weights-root", str(first), method=method_file) == 0
    assert propagate(davis, out, "--weights-root", str(second), "--force", "--sequences", "still", method=method_file) == 0
    # moving and third were made with the first weights: gone, so a later run redoes them.
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == ["still"]
    assert propagate(davis, out, "--weights-root", str(second), method=method_file) == 0
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == ["moving", "still", "third"]


@pytest.mark.parametrize(("key", "value"), [("prediction_code", "0" * 64), ("vcorr_version", "0.0.1")])
def test_a_folder_made_by_other_code_or_version_is_refused(davis, tmp_path, capsys, key, value):
    from vcorr.evaluation.pipeline import prediction_code_digest

    out = tmp_path / "pred"
    assert propagate(davis, out, "--sequences", "third") == 0
    path = out / ".vcorr-propagate.json"
    record = json.loads(path.read_text())
    assert record["prediction_code"] == prediction_code_digest() and len(record["prediction_code"]) == 64
    path.write_text(json.dumps({**record, key: value}))
    before = png_mtimes(out)
    capsys.readouterr()
    assert propagate(davis, out, "--sequences", "third") == 2
    assert f"{key}: " in capsys.readouterr().err
    assert png_mtimes(out) == before


def test_prediction_code_digest_follows_the_propagation_source(tmp_path, monkeypatch):
    import vcorr.evaluation.pipeline as pipeline
    import vcorr.provenance as provenance

    package = tmp_path / "vcorr"
    shutil.copytree(provenance.PACKAGE_DIR, package)
    monkeypatch.setattr(provenance, "PACKAGE_DIR", package)
    original = pipeline.prediction_code_digest()
    (package / "report" / "results.py").write_text("# not prediction code\n")
    assert pipeline.prediction_code_digest() == original
    protocols = package / "propagation" / "protocols.py"
    protocols.write_text(protocols.read_text() + "\n# edited\n")
    assert pipeline.prediction_code_digest() == original
    protocols.write_text(protocols.read_text() + "\nEDITED = 1\n")
    assert pipeline.prediction_code_digest() != original


# --- point 3: config propagation.set, checked when the DAG is built ------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"davis71": {"topk": 3}}, "config propagation.set.davis71: unknown benchmark 'davis71'"),
        ({"davis17": {"topkk": 3}}, "config propagation.set.davis17.topkk: not a protocol parameter"),
        ({"davis17": {"topk": 2.5}}, "config propagation.set.davis17.topk: expected int, got 2.5"),
        ({"davis17": {"precede": 3}}, "config propagation.set.davis17.precede: not a parameter of protocol 'crw'"),
        ({"davis17": {"size": [320]}}, "config propagation.set.davis17.size: must be null, [H, W]"),
    ],
)
def test_a_bad_propagation_set_fails_the_dry_run_naming_the_key(tmp_path, overrides, message):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"evaluate": {"methods": ["random_r18"]}, "propagation": {"set": overrides}}))
    done = snakemake("-n", "results/davis17/random_r18.json", "--configfile", str(REPO / "config/config.yaml"),
                     str(overlay), cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    assert message in done.stdout, done.stdout


def test_a_good_propagation_set_is_planned(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    # Written as people write numbers: YAML 1.1 (Snakemake's reader) would take 7e-2 for a string.
    overlay.write_text("propagation: {set: {davis17: {topk: 3, temp: 7e-2}}}\n")
    done = snakemake("-n", "-p", "results/davis17/random_r18.json", "--configfile", str(REPO / "config/config.yaml"),
                     str(overlay), cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert "--set temp=0.07 --set topk=3" in done.stdout


# --- point 4: targets the registries do not know -------------------------------------------------


def error_line(output: str, start: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith(start)]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize("target", ["results/davis17/hcv.json", "results/scores/davis17/hcv.json",
                                    "results/predictions/davis17/hcv/all"])
def test_a_target_with_an_unknown_method_lists_the_methods(tmp_path, target):
    done = snakemake("-n", target, "--configfile", str(REPO / "config/config.yaml"), cwd=tmp_path)
    assert done.returncode != 0
    line = error_line(done.stdout, f"{target}: unknown method 'hcv'")
    assert line.endswith(f"(methods of {REPO / 'config' / 'methods.yaml'}: {', '.join(registry('methods'))}; "
                         "<method>@<protocol> for another protocol)"), line


def test_a_target_with_an_unknown_benchmark_lists_what_the_method_supports(tmp_path):
    done = snakemake("-n", "results/davis71/random_r18.json", "--configfile", str(REPO / "config/config.yaml"), cwd=tmp_path)
    assert done.returncode != 0
    supported = ", ".join(registry("methods")["random_r18"]["benchmarks"])
    error_line(done.stdout, f"results/davis71/random_r18.json: unknown benchmark 'davis71' (method random_r18 supports: {supported})")


def test_a_pair_without_settings_names_the_benchmarks_the_method_supports(tmp_path):
    done = snakemake("-n", "results/ytvos18/stt_release_r18_s8.json", "--configfile", str(REPO / "config/config.yaml"), cwd=tmp_path)
    assert done.returncode != 0
    assert "KeyError" not in done.stdout
    supported = ", ".join(registry("methods")["stt_release_r18_s8"]["benchmarks"])
    line = error_line(done.stdout, "results/ytvos18/stt_release_r18_s8: method 'stt_release_r18_s8' has no settings for benchmark 'ytvos18'")
    assert line.endswith(f"(it supports: {supported})"), line


def test_the_message_follows_the_registry(tmp_path):
    """A method added to methods.yaml is planned, and listed when another is unknown."""
    folder = registry_copy(tmp_path / "registries")
    methods = registry("methods", folder)
    methods["hvc2"] = {**methods["random_r18"], "benchmarks": {"davis17": methods["random_r18"]["benchmarks"]["davis17"]}}
    (folder / "methods.yaml").write_text(yaml.safe_dump(methods, sort_keys=False))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"registries": str(folder)}))
    args = ("--configfile", str(REPO / "config/config.yaml"), str(overlay))
    assert snakemake("-n", "results/davis17/hvc2.json", *args, cwd=tmp_path).returncode == 0
    done = snakemake("-n", "results/davis17/hvc2c.json", *args, cwd=tmp_path)
    assert done.returncode != 0
    assert error_line(done.stdout, "results/davis17/hvc2c.json: unknown method").endswith(f"{', '.join(methods)}; <method>@<protocol> for another protocol)")
    done = snakemake("-n", "results/vip/hvc2.json", *args, cwd=tmp_path)
    error_line(done.stdout, "results/vip/hvc2: method 'hvc2' has no settings for benchmark 'vip'")


# --- point 6: refusals before anything is written; progress; help -------------------------------


@pytest.fixture()
def predictions(davis, tmp_path) -> Path:
    """Perfect predictions: the annotations themselves."""
    folder = tmp_path / "pred"
    shutil.copytree(davis / "Annotations" / "480p", folder)
    return folder


def test_score_out_under_a_file_is_refused_before_the_csvs(davis, predictions, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = main(["score", "davis", "--data-root", str(davis), "--predictions", str(predictions),
                 "--out", str(blocker / "scores.json")])
    assert code == 2
    assert f"--out {blocker / 'scores.json'}: cannot be created, {blocker} is a file" in capsys.readouterr().err
    assert not list(predictions.glob("*.csv"))


@pytest.mark.parametrize("scorer", ["davis", "vip", "jhmdb"])
@pytest.mark.parametrize("broken", ["--predictions missing", "--predictions file", "--data-root missing", "--data-root file"])
def test_a_missing_or_non_folder_input_is_named(davis, predictions, tmp_path, capsys, scorer, broken):
    flag, kind = broken.split()
    paths = {"--data-root": davis, "--predictions": predictions}
    paths[flag] = tmp_path / "nothing"
    if kind == "file":
        paths[flag].write_text("")
    extra = ["--split", str(tmp_path / "split.txt")] if scorer == "jhmdb" else ["--list", str(tmp_path / "list.txt")] if scorer == "vip" else []
    code = main(["score", scorer, "--data-root", str(paths["--data-root"]), "--predictions", str(paths["--predictions"]),
                 "--out", str(tmp_path / "scores.json"), *extra])
    assert code == 2
    expected = "missing" if kind == "missing" else "not a folder"
    assert f"{flag} {paths[flag]}: {expected}" in capsys.readouterr().err
    assert not (tmp_path / "scores.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_leaves_no_output_folder(davis, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["propagate", "--benchmark", "davis17", "--data-root", str(davis), "--out", str(out),
                 "--method-config", "random_r18", "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
    assert not out.exists()


def test_an_unreadable_checkpoint_leaves_no_output_folder(davis, tmp_path, method_file, capsys):
    root = tmp_path / "w"
    (root / "enc").mkdir(parents=True)
    (root / "enc" / "crw_r18.pth").write_bytes(b"not a checkpoint")
    out = tmp_path / "pred"
    assert propagate(davis, out, "--weights-root", str(root), method=method_file) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_propagate_out_that_is_a_file_is_refused(davis, tmp_path, capsys):
    out = tmp_path / "pred"
    out.write_text("")
    assert propagate(davis, out) == 2
    assert f"--out {out}: a file, not a folder" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_amp_on_the_cpu_warns_once_and_the_run_ends_with_a_summary(davis, tmp_path, capsys):
    out = tmp_path / "pred"
    assert propagate(davis, out, "--amp") == 0
    captured = capsys.readouterr()
    assert captured.err.count("--amp ignored on cpu") == 1, captured.err
    assert "vcorr propagate: done: 3 sequence(s) propagated (8 frames in" in captured.out, captured.out
    # The last progress bar is kept (leave=True), not wiped at the end.
    last = [segment for segment in captured.err.replace("\n", "\r").split("\r") if segment.strip()][-1]
    assert "[3/3] third" in last and "100%" in last, captured.err
    assert propagate(davis, out) == 0
    assert "done: 0 sequence(s) propagated (0 frames in" in capsys.readouterr().out


@pytest.mark.parametrize(("command", "says"), [(["propagate"], "folder"), (["score", "davis"], "JSON"),
                                              (["score", "jhmdb"], "JSON"), (["score", "vip"], "JSON")])
def test_out_help_says_what_is_written(command, says):
    parser = build_parser()
    for name in command:
        parser = next(action for action in parser._actions if hasattr(action, "choices") and isinstance(action.choices, dict)).choices[name]
    out = next(action for action in parser._actions if "--out" in action.option_strings)
    assert says in out.help, out.help
