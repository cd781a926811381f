"""Registries drive the code: a benchmark whose layout vcorr knows is added by a registry edit
alone, then propagated, scored and planned by the workflow with no code change."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_propagate_cli import make_davis, texture, two_bands
from vcorr.cli import main

REPO = Path(__file__).resolve().parents[1]
NEW_BENCHMARK = {
    "description": "a copy of DAVIS-2017 val under another name",
    "dataset": "davis17",
    "root": "DAVIS",
    "layout": "davis",
    "task": "vos",
    "subset": "val",
    "year": 2017,
    "objects": "first",
    "scorer": "davis",
}


def registries_with_new_benchmark(folder: Path, name: str = "davis17copy") -> Path:
    """config/ copied, with `name` in benchmarks.yaml and random_r18 given settings for it."""
    folder.mkdir()
    (folder / "lists").symlink_to(REPO / "config" / "lists")
    shutil.copy(REPO / "config" / "datasets.yaml", folder / "datasets.yaml")
    benchmarks = yaml.safe_load((REPO / "config" / "benchmarks.yaml").read_text())
    benchmarks[name] = NEW_BENCHMARK
    (folder / "benchmarks.yaml").write_text(yaml.safe_dump(benchmarks, sort_keys=False))
    methods = yaml.safe_load((REPO / "config" / "methods.yaml").read_text())
    methods["random_r18"]["benchmarks"] = {**methods["random_r18"]["benchmarks"], name: methods["random_r18"]["benchmarks"]["davis17"]}
    (folder / "methods.yaml").write_text(yaml.safe_dump(methods, sort_keys=False))
    return folder


def test_a_davis_layout_benchmark_added_in_benchmarks_yaml_propagates_and_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    moving = [np.roll(texture(2), shift, axis=1) for shift in range(0, 8, 2)]
    original = make_davis(tmp_path / "DAVIS", {"still": [texture(1)] * 3, "moving": moving},
                          {"still": two_bands(), "moving": two_bands()})
    copy = tmp_path / "copy" / "DAVIS"
    shutil.copytree(original, copy)

    scores = {}
    for benchmark, root in (("davis17", original), ("davis17copy", copy)):
        if benchmark == "davis17copy":
            monkeypatch.setenv("VCORR_CONFIG_DIR", str(registries_with_new_benchmark(tmp_path / "config")))
        out = tmp_path / "pred" / benchmark
        assert main(["propagate", "--benchmark", benchmark, "--data-root", str(root), "--method-config", "random_r18",
                     "--device", "cpu", "--out", str(out)]) == 0
        record = json.loads((out / ".vcorr-propagate.json").read_text())
        assert record["benchmark"] == benchmark and record["benchmark_sequences"] == ["still", "moving"]
        score_file = tmp_path / f"{benchmark}.json"
        assert main(["score", "davis", "--benchmark", benchmark, "--data-root", str(root), "--predictions", str(out),
                     "--out", str(score_file), "--csv-dir", str(tmp_path / f"{benchmark}-csv"), "--jobs", "1"]) == 0
        scores[benchmark] = json.loads(score_file.read_text())
        # The official CSVs go where they are told, not into the predictions folder.
        assert (tmp_path / f"{benchmark}-csv" / "global_results-val.csv").is_file()
        assert not list(out.glob("*.csv"))
    for sequence in ("still", "moving"):
        for frame in sorted(path.name for path in (tmp_path / "pred" / "davis17" / sequence).iterdir()):
            assert (tmp_path / "pred" / "davis17copy" / sequence / frame).read_bytes() == \
                (tmp_path / "pred" / "davis17" / sequence / frame).read_bytes()
    assert scores["davis17copy"]["global"] == scores["davis17"]["global"]
    assert scores["davis17copy"]["per_object"] == scores["davis17"]["per_object"]


def test_scorer_refuses_a_benchmark_of_another_scorer(tmp_path, capsys):
    code = main(["score", "davis", "--benchmark", "jhmdb", "--data-root", str(tmp_path), "--predictions", str(tmp_path)])
    assert code == 2 and "scored by 'jhmdb'" in capsys.readouterr().err


def test_registries_are_looked_up_file_by_file_along_the_config_search_path(tmp_path, monkeypatch):
    """VCORR_CONFIG_DIR as the workflow sets it for a deployed project: the project's folder first
    (its methods.yaml, with a method of its own), vcorr's config/ after (everything else)."""
    from vcorr.config import config_file, load_registry, optional_config_file
    from vcorr.errors import VcorrError
    from vcorr.evaluation.methods import load_method

    project = tmp_path / "project"
    project.mkdir()
    methods = yaml.safe_load((REPO / "config" / "methods.yaml").read_text())
    methods["my_random"] = methods["random_r18"]
    (project / "methods.yaml").write_text(yaml.safe_dump(methods, sort_keys=False))
    monkeypatch.setenv("VCORR_CONFIG_DIR", os.pathsep.join((str(project), str(REPO / "config"))))
    assert config_file("methods.yaml") == project / "methods.yaml"
    assert config_file("benchmarks.yaml") == REPO / "config" / "benchmarks.yaml"
    assert config_file("lists/jhmdb_val_list.txt") == REPO / "config" / "lists" / "jhmdb_val_list.txt"
    assert load_method("my_random").source.startswith(f"{project / 'methods.yaml'} [my_random]")
    assert "davis17" in load_registry("benchmarks")
    monkeypatch.setenv("VCORR_CONFIG_DIR", str(project))  # one folder: nothing else is looked at
    assert optional_config_file("protocols.yaml") is None
    with pytest.raises(VcorrError, match=r"benchmarks\.yaml: registry file missing \(looked in .*project\)"):
        config_file("benchmarks.yaml")
