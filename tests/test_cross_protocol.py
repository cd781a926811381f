"""The cross-protocol table's building blocks: `<method>@<protocol>` variants, the cell list and
the table (vcorr.evaluation.cross_protocol, vcorr.report.cross_protocol_table); the workflow run is in test_workflow.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vcorr.errors import VcorrError
from vcorr.evaluation.cross_protocol import (
    check_protocols,
    cross_protocol_cells,
    protocol_variants,
    variant_entry,
)
from vcorr.evaluation.methods import load_method
from vcorr.report.cross_protocol_table import write_cross_protocol_table

REPO = Path(__file__).resolve().parents[1]


def registry(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


def test_a_method_under_the_other_protocol_keeps_its_features_and_takes_the_references_settings():
    methods, protocols = registry("methods"), registry("protocols")
    entry = variant_entry("hvc_release_coco@stt", methods, protocols)
    own = methods["hvc_release_coco"]
    assert entry["protocol"] == "stt"
    assert (entry["encoders"], entry["fusion"], entry["input"]) == (own["encoders"], own["fusion"], own["input"])
    reference = methods[protocols["stt"]["settings_from"][0]]["benchmarks"]
    for benchmark, settings in reference.items():
        assert entry["benchmarks"][benchmark] == settings
    # The demo benchmarks come from the second reference: the first has none.
    assert entry["benchmarks"]["demo_davis"] == methods["demo_stt"]["benchmarks"]["demo_davis"]
    assert variant_entry("hvc_release_coco@crw", methods, protocols) is None  # its own protocol
    assert variant_entry("no_such_method@stt", methods, protocols) is None


def test_the_first_reference_with_a_benchmark_gives_its_settings():
    methods = {
        "a": {"protocol": "crw", "benchmarks": {"x": {"cxt_size": 1}}},
        "b": {"protocol": "crw", "benchmarks": {"x": {"cxt_size": 2}, "y": {"cxt_size": 3}}},
        "s": {"protocol": "stt", "encoders": [], "benchmarks": {"x": {"precede": 1}}},
    }
    protocols = {"crw": {"settings_from": ["a", "b"]}}
    assert variant_entry("s@crw", methods, protocols)["benchmarks"] == {"x": {"cxt_size": 1}, "y": {"cxt_size": 3}}
    assert list(protocol_variants(methods, protocols)) == ["s@crw"]


def test_a_reference_of_the_wrong_protocol_is_refused_naming_it():
    methods = registry("methods")
    with pytest.raises(VcorrError, match=r"stt.settings_from.0: method 'crw_release' uses protocol 'crw'"):
        check_protocols({"stt": {"settings_from": ["crw_release"]}}, methods, "protocols.yaml")
    with pytest.raises(VcorrError, match=r"crw.settings_from.1: 'nope' is not a method"):
        check_protocols({"crw": {"settings_from": ["crw_release", "nope"]}}, methods, "protocols.yaml")


def test_load_method_resolves_a_variant_with_the_protocols_label_path_and_the_methods_options():
    variant = load_method("hvc_release_coco@stt")
    own = load_method("hvc_release_coco")
    reference = load_method("stt_release_r18_s8")
    assert variant.name == "hvc_release_coco@stt" and variant.protocol == "stt"
    assert variant.features == own.features
    assert variant.options == own.options and variant.options["zero_image_bn_update"] is True
    settings, published = variant.settings_for("davis17"), reference.settings_for("davis17")
    assert (settings.protocol, settings.params, settings.size) == (published.protocol, published.params, published.size)
    assert variant.settings_for("jhmdb").size == (320, 320)
    crw = load_method("stt_release_r18_s8@crw").settings_for("davis17")
    assert crw == load_method("crw_release").settings_for("davis17")
    with pytest.raises(VcorrError, match="own protocol"):
        load_method("stt_release_r18_s8@stt")
    with pytest.raises(VcorrError, match="protocol 'xyz' is not one of crw, stt, dino"):
        load_method("crw_release@xyz")


def test_a_cnn_under_dino_takes_dinos_settings_and_a_vit_under_crw_and_stt_theirs():
    cnn = load_method("crw_release@dino")
    assert cnn.features == load_method("crw_release").features and cnn.input == "imagenet_rgb"
    settings = cnn.settings_for("davis17")
    assert settings.params == {"n_last_frames": 7, "size_mask_neighborhood": 12, "topk": 5, "temp": 0.1}
    assert settings.input_size(480, 854) == (480, 832)  # DINO's floor to 64 of the long side
    assert "jhmdb" not in cnn.benchmarks  # dino defines no keypoint task
    vit = load_method("dino_vits16@crw").settings_for("davis17")
    assert vit == load_method("crw_release").settings_for("davis17")
    # The protocol's sizes, each side floored to the ViT's patch.
    assert vit.input_size(480, 854, multiple=16) == (480, 848)
    stt = load_method("dinov2_vits14@stt").settings_for("jhmdb")
    assert stt.input_size(240, 320, multiple=14) == (308, 308)


def test_every_cell_is_listed_and_those_that_cannot_run_say_why():
    methods, protocols = registry("methods"), registry("protocols")
    tasks = {name: entry["task"] for name, entry in registry("benchmarks").items()}
    cells = cross_protocol_cells(["crw_release", "stt_release_r18_s8"], ["davis17", "ytvos18", "jhmdb"], methods,
                                 protocols, tasks)
    assert [(c.benchmark, c.method, c.protocol) for c in cells] == [
        (b, m, p) for b in ("davis17", "ytvos18", "jhmdb") for m in ("crw_release", "stt_release_r18_s8")
        for p in ("crw", "stt", "dino")
    ]
    by_key = {(c.benchmark, c.method, c.protocol): c for c in cells}
    assert by_key["davis17", "crw_release", "crw"].evaluated_as == "crw_release"
    assert by_key["davis17", "crw_release", "crw"].settings == "own"
    assert by_key["davis17", "crw_release", "stt"].evaluated_as == "crw_release@stt"
    assert by_key["davis17", "crw_release", "stt"].settings == "stt_release_r18_s8"
    # Spa-then-Temp defines no YouTube-VOS settings: its own cell and crw_release's stt cell are empty.
    assert by_key["ytvos18", "stt_release_r18_s8", "stt"].evaluated_as is None
    assert "no settings for ytvos18" in by_key["ytvos18", "stt_release_r18_s8", "stt"].note
    assert by_key["ytvos18", "crw_release", "stt"].evaluated_as is None
    assert "settings_from" in by_key["ytvos18", "crw_release", "stt"].note
    assert by_key["ytvos18", "stt_release_r18_s8", "crw"].evaluated_as == "stt_release_r18_s8@crw"
    # A CNN under DINO's protocol, with the settings of DINO's released ViT-S/16.
    assert by_key["davis17", "crw_release", "dino"].evaluated_as == "crw_release@dino"
    assert by_key["davis17", "crw_release", "dino"].settings == "dino_vits16"
    # dino defines no keypoint task: the cell says so (not that no reference has settings).
    assert by_key["jhmdb", "crw_release", "dino"].evaluated_as is None
    assert "protocol dino defines no jhmdb task" in by_key["jhmdb", "crw_release", "dino"].note
    assert by_key["jhmdb", "crw_release", "stt"].evaluated_as == "crw_release@stt"


def _result(folder: Path, benchmark: str, method: str, score: float) -> Path:
    path = folder / benchmark / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": benchmark, "method": method, "status": "scored", "headline": {"J&F-Mean": score}}))
    return path


def test_the_table_takes_each_cells_score_from_its_result(tmp_path):
    methods, protocols = registry("methods"), registry("protocols")
    cells = cross_protocol_cells(["crw_release", "stt_release_r18_s8"], ["davis17"], methods, protocols)
    results = [
        _result(tmp_path, "davis17", "crw_release", 0.5),
        _result(tmp_path, "davis17", "crw_release@stt", 0.25),
        _result(tmp_path, "davis17", "crw_release@dino", 0.75),
        _result(tmp_path, "davis17", "stt_release_r18_s8@crw", 0.125),
        _result(tmp_path, "davis17", "stt_release_r18_s8", 0.0625),
        _result(tmp_path, "davis17", "stt_release_r18_s8@dino", 0.375),
    ]
    out = tmp_path / "cross.csv"
    assert write_cross_protocol_table(cells, results, out) == 6
    import csv

    rows = list(csv.DictReader(out.open()))
    # J&F as the scorer writes it (a fraction) in the results, in percent in the table.
    scores = {(row["method"], row["protocol"]): float(row["J&F-Mean (%)"]) for row in rows}
    assert scores == {("crw_release", "crw"): 50.0, ("crw_release", "stt"): 25.0, ("crw_release", "dino"): 75.0,
                      ("stt_release_r18_s8", "crw"): 12.5, ("stt_release_r18_s8", "stt"): 6.25,
                      ("stt_release_r18_s8", "dino"): 37.5}
    assert [row["settings"] for row in rows] == ["own", "stt_release_r18_s8", "dino_vits16",
                                                 "crw_release", "own", "dino_vits16"]
    with pytest.raises(VcorrError, match=r"no result given for crw_release@stt on davis17"):
        write_cross_protocol_table(cells, [results[0], results[2], results[3]], tmp_path / "other.csv")
    assert not (tmp_path / "other.csv").exists()
    with pytest.raises(VcorrError, match=r"is no cell of the table"):
        write_cross_protocol_table(cells, [*results, _result(tmp_path, "davis16", "crw_release", 0.1)], tmp_path / "x.csv")
