"""Method and benchmark registries: every entry is valid and consistent with the other registries,
and bad method files are refused with the file and key named."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vcorr.data.benchmarks import benchmark_names
from vcorr.errors import VcorrError
from vcorr.cli import build_parser
from vcorr.config import parse_overrides
from vcorr.evaluation.methods import load_method
from vcorr.propagation import PROTOCOLS, make_propagator
from vcorr.propagation.parameters import PROTOCOL_TASKS
from vcorr.config import load_registry

RANDOM_METHOD = {
    "description": "test",
    "encoders": [{"arch": "crw_r18", "weights": None, "seed": 3}],
    "fusion": None,
    "input": "imagenet_rgb",
    "protocol": "crw",
    "benchmarks": {"davis17": {"cxt_size": 4, "radius": 6, "topk": 5, "temp": 0.05, "size": None}},
}


def write_method(tmp_path: Path, data, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_benchmark_registry_lists_every_layout_benchmark_with_its_scorer():
    benchmarks = load_registry("benchmarks")
    datasets = load_registry("datasets")
    assert set(benchmarks) == set(benchmark_names())
    # Every scorer a benchmark names is a `vcorr score` sub-command (or the evaluation server's).
    score = next(action for action in build_parser()._actions if isinstance(getattr(action, "choices", None), dict)).choices["score"]
    scorers = next(action for action in score._actions if isinstance(getattr(action, "choices", None), dict)).choices
    for name, entry in benchmarks.items():
        assert entry["dataset"] in datasets, name
        assert entry["scorer"] in {*scorers, "server"}, name
        # The dataset root is stated once, here, not again in datasets.yaml.
        assert isinstance(entry["root"], str) and "root" not in datasets[entry["dataset"]], name
        if entry["scorer"] == "server":
            assert entry["server"]["url"].startswith("https://"), name
    assert benchmarks["davis16"]["year"] == 2016 and benchmarks["davis17"]["year"] == 2017
    assert (Path(__file__).resolve().parents[1] / "config" / benchmarks["jhmdb"]["split_list"]).is_file()


FEWER_BENCHMARKS = {"vfs_r18", "vfs_r50", "sfc", "sfc_fc_r18", "dul_ytvos", "dul_kinetics", "dul_trackingnet", "dul_oxuva"}


@pytest.mark.parametrize("name", list(load_registry("methods")))
def test_registry_method_resolves_on_every_benchmark_it_lists(name):
    from vcorr.models.encoders import encoder_names

    method = load_method(name)
    datasets = load_registry("datasets")
    for encoder in method.encoders:
        assert encoder.arch in encoder_names()
        if encoder.weights and encoder.weights.id:
            # The file is one the data step promises to unpack for that weights id.
            assert encoder.weights.file in datasets[encoder.weights.id]["index"]["weights"]["files"]
        elif encoder.weights:
            # A file the workflow produces: the export (or the initialisation) of a model it trains.
            model = re.fullmatch(r"results/models/(?:init/)?([^/]+)\.pth", encoder.weights.path)
            assert model and model[1] in load_registry("models"), encoder.weights.path
    # A method covers every benchmark of real data, or (the demo's) every one of a built set,
    # of every task its protocol defines; only crw has objects that appear later (YouTube-VOS).
    # Validation splits take their evaluation split's settings (`settings_from`): no method lists them.
    # The compared releases whose own code evaluates fewer benchmarks (VFS, SFC: DAVIS; DUL: DAVIS
    # and YouTube-VOS) list only those: their other cells are listed as having no settings.
    benchmarks = load_registry("benchmarks")
    evaluated = {name for name in benchmark_names() if benchmarks[name].get("role", "evaluation") == "evaluation"}
    built = {name for name in evaluated if datasets[benchmarks[name]["dataset"]].get("built_by")}
    family = built if set(method.benchmarks) <= built else evaluated - built
    expected = {name for name in family if benchmarks[name]["task"] in PROTOCOL_TASKS[method.protocol]}
    expected -= {"ytvos18", "ytvos19"} if method.protocol != "crw" else set()
    assert set(method.benchmarks) <= expected
    assert set(method.benchmarks) == expected or name in FEWER_BENCHMARKS
    assert "davis17" in method.benchmarks or set(method.benchmarks) <= built
    for benchmark in method.benchmarks:
        # The settings are what the protocol's propagator takes: it starts from them on a frame.
        settings = method.settings_for(benchmark)
        # The pipeline adds what comes from the encoder (its stride, for protocols that take it).
        runtime = {"stride": 8} if "stride" in inspect.signature(PROTOCOLS[method.protocol]).parameters else {}
        propagator = make_propagator(method.protocol, np.zeros((16, 16), dtype=np.uint8), **settings.params, **runtime)
        propagator.push(torch.rand(8, 2, 2))


def test_published_settings_of_each_family():
    hvc = load_method("hvc_release_coco").settings_for("davis17")
    assert hvc.params == {"cxt_size": 50, "radius": 12, "topk": 15, "temp": 0.1} and hvc.size is None
    crw = load_method("crw_release")
    assert crw.settings_for("davis17").params == {"cxt_size": 20, "radius": 12, "topk": 10, "temp": 0.05}
    assert crw.settings_for("jhmdb").params["cxt_size"] == 7 and crw.settings_for("jhmdb").size == (320, 320)
    assert crw.settings_for("vip").params["cxt_size"] == 4 and crw.settings_for("vip").size == (560, 560)
    s8, s4 = load_method("stt_release_r18_s8"), load_method("stt_release_r50_s4")
    assert [s8.settings_for(b).params["nrange"] for b in ("davis17", "jhmdb", "vip")] == [24, 10, 32]
    assert [s4.settings_for(b).params["nrange"] for b in ("davis17", "jhmdb", "vip")] == [70, 24, 70]
    assert s8.input == "lab" and s8.settings_for("davis17").params["with_first_neighbor"] is True
    assert load_method("hvc_release_ytvos").fusion == "hvc"


def test_short_side_size_keeps_aspect_and_leaves_480p_alone():
    settings = load_method("stt_release_r18_s8").settings_for("davis17")
    assert settings.input_size(480, 854) == (480, 854)
    assert settings.input_size(720, 1280) == (480, 853)
    assert load_method("stt_release_r18_s8").settings_for("vip").input_size(720, 1280) == (560, 560)


def test_random_r18_needs_no_weights_but_released_models_name_their_missing_file(tmp_path):
    load_method("random_r18").check_weights(tmp_path)
    with pytest.raises(VcorrError, match=r"hvc_release/hvc_coco\.pth: missing .*vcorr data fetch hvc_release"):
        load_method("hvc_release_coco").check_weights(tmp_path)
    (tmp_path / "crw").mkdir()
    (tmp_path / "crw" / "pretrained.pth").write_bytes(b"x")
    load_method("crw_release").check_weights(tmp_path)
    assert load_method("crw_release").weight_files(tmp_path) == [tmp_path / "crw" / "pretrained.pth"]


def test_method_from_a_file_plain_or_as_a_registry_entry(tmp_path):
    plain = load_method(write_method(tmp_path, RANDOM_METHOD))
    assert plain.name == "mine" and plain.settings_for("davis17").params["topk"] == 5
    wrapped = load_method(write_method(tmp_path, {"tiny": RANDOM_METHOD}, "wrapped.yaml"))
    assert wrapped.name == "tiny" and wrapped.encoders[0].seed == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("protocol"), r"missing key\(s\) protocol"),
        (lambda m: m.update(colour="red"), r"unknown key\(s\) colour"),
        (lambda m: m.update(protocol="dense"), r"protocol 'dense'"),
        (lambda m: m.update(input="bgr"), r"input 'bgr'"),
        (lambda m: m["encoders"][0].pop("seed"), r"encoders\[0\]: .*needs an integer seed"),
        (lambda m: m["encoders"][0].update(weights={"id": "crw"}), r"encoders\[0\]\.weights: must be null or"),
        (lambda m: m.update(fusion="hvc"), r"fusion hvc fuses exactly two encoders"),
        (lambda m: m["benchmarks"].update(kitti={}), r"benchmarks\.kitti is not a benchmark"),
        (lambda m: m["benchmarks"]["davis17"].pop("topk"), r"davis17: missing crw parameter\(s\) topk"),
        (lambda m: m["benchmarks"]["davis17"].update(topk=2.5), r"davis17\.topk: expected int, got 2\.5"),
        (lambda m: m["benchmarks"]["davis17"].update(radius=-1), r"davis17\.radius: must be positive"),
        (lambda m: m["benchmarks"]["davis17"].update(nrange=3), r"unknown crw parameter\(s\) nrange"),
        (lambda m: m["benchmarks"]["davis17"].update(size=[320]), r"davis17\.size: must be null, \[H, W\]"),
    ],
)
def test_invalid_method_files_are_refused_naming_file_and_key(tmp_path, change, message):
    data = yaml.safe_load(yaml.safe_dump(RANDOM_METHOD))
    change(data)
    path = write_method(tmp_path, data)
    with pytest.raises(VcorrError, match=message) as error:
        load_method(path)
    assert str(path) in str(error.value)


def test_unknown_method_name_and_missing_file(tmp_path):
    with pytest.raises(VcorrError, match=r"unknown method 'nope'.*random_r18"):
        load_method("nope")
    with pytest.raises(VcorrError, match=r"absent\.yaml: method config file missing"):
        load_method(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("encoders: [\n")
    with pytest.raises(VcorrError, match=r"broken\.yaml: invalid YAML"):
        load_method(tmp_path / "broken.yaml")


def test_overrides_are_typed_and_checked():
    assert parse_overrides(["topk=5", "temp=0.1", "with_first_neighbor=false", "size=[320, 320]", "size2=null"]) == {
        "topk": 5, "temp": 0.1, "with_first_neighbor": False, "size": [320, 320], "size2": None,
    }
    method = load_method("stt_release_r18_s8")
    settings = method.settings_for("davis17", ["nrange=12", "with_first_neighbor=false", "size=[64, 96]"])
    assert settings.params["nrange"] == 12 and settings.params["with_first_neighbor"] is False
    assert settings.size == (64, 96)
    # The registry entry itself is untouched (its settings are shared through YAML anchors).
    assert method.settings_for("davis17").params["nrange"] == 24
    assert load_method("stt_release_r18_s8").settings_for("davis17").params["nrange"] == 24
    with pytest.raises(VcorrError, match=r"--set radius: not a parameter of protocol 'stt'"):
        method.settings_for("davis17", ["radius=3"])
    with pytest.raises(VcorrError, match=r"davis17\.topk: expected int, got 'many' \(after --set topk=many\)"):
        method.settings_for("davis17", ["topk=many"])
    with pytest.raises(VcorrError, match=r"expected KEY=VALUE"):
        parse_overrides(["topk"])


@pytest.mark.parametrize(("text", "value"), [("7e-2", 0.07), ("1E-1", 0.1), ("5e+0", 5.0), ("2", 2)])
def test_numbers_as_people_write_them_in_set_and_in_method_files(tmp_path, text, value):
    settings = load_method("random_r18").settings_for("davis17", [f"temp={text}"])
    assert settings.params["temp"] == value and type(settings.params["temp"]) is type(value)
    path = tmp_path / "method.yaml"
    path.write_text(yaml.safe_dump(RANDOM_METHOD).replace("temp: 0.05", f"temp: {text}"))
    assert load_method(path).settings_for("davis17").params["temp"] == value


def test_settings_for_an_unsupported_benchmark(tmp_path):
    method = load_method(write_method(tmp_path, RANDOM_METHOD))
    with pytest.raises(VcorrError, match=r"no settings for benchmark 'vip' \(it supports: davis17\)"):
        method.settings_for("vip")


def test_registry_file_documents_its_schema():
    text = (Path(__file__).resolve().parents[1] / "config" / "methods.yaml").read_text()
    for key in ("encoders:", "fusion:", "input:", "protocol:", "benchmarks:", "short_side"):
        assert key in textwrap.dedent(text)


def test_tie_rule_is_a_method_option_cpu_by_default_and_checked():
    method = load_method("stt_release_r18_s8")
    assert method.options["ties"] == "cpu"
    assert method.settings_for("davis17", ["ties=cuda"]).as_dict()["ties"] == "cuda"
    with pytest.raises(VcorrError, match="ties must be one of cpu, cuda, got 'gpu'"):
        method.settings_for("davis17", ["ties=gpu"])


def test_dinos_size_rule_floors_the_long_side_and_vits_take_whole_patches(tmp_path):
    settings = load_method("dino_vits16").settings_for("davis17")
    assert settings.size == {"short_side": 480, "long_side_floor": 64}
    assert settings.input_size(480, 854) == (480, 832)  # DAVIS: 52 x 30 patches at 16
    assert settings.input_size(240, 320) == (480, 640)  # small frames are upsampled
    assert settings.input_size(1280, 720) == (832, 480)  # portrait: the width is 480
    assert settings.input_size(300, 300) == (480, 448)  # square: DINO's landscape branch
    assert settings.input_size(480, 854, multiple=14) == (476, 826)
    assert load_method("dino_vits16").settings_for("vip").input_size(720, 1280) == (560, 560)
    # A settings entry without `size` takes its protocol's default; `size: null` is native.
    crw_like = {"n_last_frames": 7, "size_mask_neighborhood": 12, "topk": 5}
    dino = {**RANDOM_METHOD, "protocol": "dino", "benchmarks": {"davis17": crw_like, "davis16": {**crw_like, "size": None}}}
    method = load_method(write_method(tmp_path, dino))
    assert method.settings_for("davis17").size == {"short_side": 480, "long_side_floor": 64}
    assert method.settings_for("davis16").size is None and method.settings_for("davis17").params["temp"] == 0.1


def test_a_protocol_refuses_a_task_it_does_not_define(tmp_path):
    entry = {**RANDOM_METHOD, "protocol": "dino",
             "benchmarks": {"jhmdb": {"n_last_frames": 7, "size_mask_neighborhood": 12, "topk": 5}}}
    with pytest.raises(VcorrError, match=r"benchmarks\.jhmdb: protocol dino defines no jhmdb task"):
        load_method(write_method(tmp_path, entry))
