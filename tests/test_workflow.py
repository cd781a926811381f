"""The Snakemake workflow: its DAG on the real registries, and the tiny configuration run for real.

Fast tests dry-run the workflow on the project's registries (every stage listed from download to
score, the whole evaluation DAG, lint, config validation). The slow ones build the tiny
configuration's data (.test/build_data.py), serve the downloadable part from 127.0.0.1 (the
data CLI's mirror), place the manual-only archives by hand, run every rule on the CPU, then
assert what each kind of change reruns, Snakemake's lock against a concurrent run, and what a
failing job leaves behind.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from workflow_fixtures import (REPO, REPORTED, RUN_TIMEOUT_S, TINY, TRAINED, TinyWorkspace, fork_workspace,
                               load_builder, make_tiny_workspace, planned_jobs, registry, rule_counts, sha256,
                               snakemake)

# --- the project's registries: dry runs ------------------------------------------------------


def test_dry_run_of_one_result_lists_every_stage_from_download_to_score(fresh_directory):
    done = snakemake("-n", "results/davis17/hvc_release_coco.json",
                     "--configfile", str(REPO / "config/config.yaml"), cwd=fresh_directory)
    assert done.returncode == 0, done.stdout
    assert rule_counts(done.stdout) == Counter({
        "fetch_davis17": 1, "fetch_hvc_release": 1, "fetch_moco_v1_200ep": 1,  # downloads
        "extract": 1, "index": 1,  # DAVIS unpacked and checked
        "weights_hvc_release": 1, "weights_moco_v1_200ep": 1,  # HVC's COCO encoder and MoCo for the fusion
        "propagate": 1, "score": 1, "result": 1,
    })
    commands = done.stdout
    assert "vcorr propagate --benchmark davis17 --data-root resources/data/davis17/DAVIS" in commands
    assert "--method-config hvc_release_coco" in commands
    assert "vcorr score davis --benchmark davis17 --data-root resources/data/davis17/DAVIS" in commands
    # The official CSVs go beside the rule's output, not into the predictions folder (its input).
    assert "--csv-dir results/scores/davis17/hvc_release_coco.official" in commands


def test_dry_run_of_a_method_under_the_other_protocol_plans_its_own_chain(fresh_directory):
    done = snakemake("-n", "results/vip/hvc_release_coco@stt.json",
                     "--configfile", str(REPO / "config/config.yaml"), cwd=fresh_directory)
    assert done.returncode == 0, done.stdout
    assert planned_jobs(done.stdout)[("propagate", "vip", "hvc_release_coco@stt", "all")] == 1
    assert rule_counts(done.stdout)["weights_moco_v1_200ep"] == 1  # its features: HVC fused with MoCo
    assert "--method-config hvc_release_coco@stt" in done.stdout
    done = snakemake("-n", "results/vip/stt_release_r18_s8@stt.json",
                     "--configfile", str(REPO / "config/config.yaml"), cwd=fresh_directory)
    assert done.returncode != 0
    assert "unknown method 'stt_release_r18_s8@stt'" in done.stdout, done.stdout


def test_dry_run_of_all_builds_every_method_on_every_benchmark(fresh_directory):
    methods, benchmarks = registry("methods"), registry("benchmarks")
    shards = yaml.safe_load((REPO / "config/config.yaml").read_text())["propagation"]["shards"]
    pairs = [(benchmark, method) for method, entry in methods.items() for benchmark in entry["benchmarks"]]
    server = {name for name, entry in benchmarks.items() if entry["scorer"] == "server"}

    done = snakemake("-n", "all", "--configfile", str(REPO / "config/config.yaml"), cwd=fresh_directory)
    assert done.returncode == 0, done.stdout
    jobs = planned_jobs(done.stdout)
    counts = rule_counts(done.stdout)
    assert counts["result"] == len(pairs) and counts["summary"] == 1
    assert counts["propagate"] == sum(shards.get(b, 1) if b in server else 1 for b, _ in pairs)
    assert counts["export"] == sum(b in server for b, _ in pairs)
    for benchmark, method in pairs:
        assert jobs[("result", benchmark, method, None)] == 1
    # YouTube-VOS: config-many shards per method, gathered by one export.
    method = next(iter(methods))
    ytvos_parts = {part for (rule, b, m, part) in jobs if rule == "propagate" and b == "ytvos18" and m == method}
    assert ytvos_parts == {f"shard-{i}-of-{shards['ytvos18']}" for i in range(shards["ytvos18"])}


def test_dry_run_of_the_field_table_plans_every_rows_jobs(fresh_directory):
    from vcorr.report.published import table_cells

    done = snakemake("-n", "results/tables/field.csv", "--configfile", str(REPO / "config/config.yaml"),
                     cwd=fresh_directory)
    assert done.returncode == 0, done.stdout
    cells = table_cells("field", registry("published"), registry("methods"), registry("protocols"), registry("benchmarks"))
    evaluated = {(cell.benchmark, cell.evaluated_as) for cell in cells if cell.evaluated_as}
    jobs = planned_jobs(done.stdout)
    counts = rule_counts(done.stdout)
    assert counts["table"] == 1 and counts["result"] == counts["score"] == counts["propagate"] == len(evaluated)
    for benchmark, method in evaluated:
        assert jobs[("result", benchmark, method, None)] == 1, (benchmark, method)
        assert jobs[("propagate", benchmark, method, "all")] == 1, (benchmark, method)
    # Every protocol of every released CNN and ViT, e.g. VFS under crw and dino, DINO's ViT under stt.
    assert {("davis17", "vfs_r18@crw"), ("davis17", "vfs_r18@dino"), ("jhmdb", "dul_ytvos@stt"),
            ("vip", "dino_vits16@stt"), ("davis17", "sfc")} <= evaluated
    assert not counts["train"]  # released models only
    assert "vcorr report table field" in done.stdout


@pytest.mark.slow
def test_official_davis_crosscheck_joins_all_when_enabled(fresh_directory, tmp_path):
    overlay = tmp_path / "crosscheck.yaml"
    overlay.write_text(yaml.safe_dump({"scoring": {"crosscheck_davis": True}}))
    done = snakemake("-n", "all", "--configfile", str(REPO / "config/config.yaml"), str(overlay), cwd=fresh_directory)
    assert done.returncode == 0, done.stdout
    crosschecks = {(b, m) for (rule, b, m, _part) in planned_jobs(done.stdout) if rule == "crosscheck_davis"}
    # DAVIS-2017 sets scored locally only (davis17, the demo's): the official tool does not score
    # DAVIS-2016, and test-dev is scored by the server.
    benchmarks = registry("benchmarks")
    davis2017 = {name for name, entry in benchmarks.items() if entry.get("scorer") == "davis" and entry.get("year") == 2017}
    assert "davis17" in davis2017 and "davis16" not in davis2017
    assert crosschecks == {(benchmark, method) for method, entry in registry("methods").items()
                           for benchmark in entry["benchmarks"] if benchmark in davis2017}


def test_lint_is_clean(fresh_directory):
    done = snakemake("--lint", "--configfile", str(REPO / "config/config.yaml"), cwd=fresh_directory)
    assert done.returncode == 0, done.stdout
    assert "Congratulations, your workflow is in a good condition!" in done.stdout, done.stdout


def merged(base: dict, overlay: dict) -> dict:
    """`overlay` over `base`, nested mappings merged (as Snakemake merges --configfile files)."""
    result = copy.deepcopy(base)
    for key, value in overlay.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
    return result


def test_bad_config_fails_the_dry_run_naming_the_key(fresh_directory, tmp_path):
    overlay_file = tmp_path / "overlay.yaml"
    overlay_file.write_text(yaml.safe_dump({"resoures": {}}))
    done = snakemake("-n", "--configfile", str(REPO / "config/config.yaml"), str(overlay_file), cwd=fresh_directory)
    assert done.returncode != 0
    assert "resoures" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ({"propagation": {"device": "tpu"}}, "propagation.device: 'tpu' is not one of"),
        ({"propagation": {"shards": {"ytvos18": 0}}}, "propagation.shards.ytvos18: 0 is less than the minimum of 1"),
        ({"resoures": {}}, "(top level): Additional properties are not allowed ('resoures' was unexpected)"),
    ],
)
def test_bad_config_values_are_named_by_the_schema_check(overlay, message):
    # The check the dry run above makes, in-process: the schema the Snakefile validates against.
    from vcorr.config import schema_error

    config = merged(registry("config"), overlay)
    assert message in (schema_error(config, REPO / "workflow/schemas/config.schema.yaml") or ""), overlay


def test_an_unknown_method_in_the_config_fails_the_dry_run(fresh_directory, tmp_path):
    overlay_file = tmp_path / "overlay.yaml"
    overlay_file.write_text(yaml.safe_dump({"evaluate": {"methods": ["no_such_method"]}}))
    done = snakemake("-n", "--configfile", str(REPO / "config/config.yaml"), str(overlay_file), cwd=fresh_directory)
    assert done.returncode != 0
    assert "config evaluate.methods: unknown no_such_method" in done.stdout, done.stdout


def registry_copy(folder: Path) -> Path:
    """The project's registries in `folder` (lists linked), to be edited by a test."""
    folder.mkdir()
    (folder / "lists").symlink_to(REPO / "config" / "lists")
    for name in ("datasets", "benchmarks", "methods", "models"):
        shutil.copy(REPO / "config" / f"{name}.yaml", folder / f"{name}.yaml")
    return folder


REGISTRY_TYPOS = [
    ("methods", lambda data: data["random_r18"].update(fusoin=None), "random_r18"),
    ("methods", lambda data: data["random_r18"].update(benchmarks={"davis17": {"cxt_size": 2, "radius": 4, "topk": "ten", "temp": 0.1}}),
     "random_r18.benchmarks.davis17.topk"),
    ("benchmarks", lambda data: data["davis17"].update(layuot="davis"), "davis17"),
    ("benchmarks", lambda data: data["vip"].update(layout="vipp"), "vip.layout"),
    ("datasets", lambda data: data["davis17"]["files"][0].update(sah256=None), "davis17.files.0"),
]


def test_a_registry_typo_fails_the_dry_run_naming_file_and_key(fresh_directory, tmp_path):
    registry_name, typo, key = REGISTRY_TYPOS[1]
    folder = registry_copy(tmp_path / "registries")
    data = registry(registry_name, folder)
    typo(data)
    (folder / f"{registry_name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    overlay_file = tmp_path / "overlay.yaml"
    overlay_file.write_text(yaml.safe_dump({"registries": str(folder)}))
    done = snakemake("-n", "--configfile", str(REPO / "config/config.yaml"), str(overlay_file), cwd=fresh_directory)
    assert done.returncode != 0
    assert f"{folder / registry_name}.yaml: {key}:" in done.stdout, done.stdout


@pytest.mark.parametrize(("registry_name", "typo", "key"), REGISTRY_TYPOS)
def test_registry_typos_are_named_by_the_schema_check(registry_name, typo, key):
    # The check the dry run above makes, in-process, for every kind of typo.
    from vcorr.config import schema_error

    data = registry(registry_name)
    typo(data)
    error = schema_error(data, REPO / f"workflow/schemas/{registry_name}.schema.yaml")
    assert error is not None and error.startswith(f"{key}:"), error


def test_a_benchmark_added_to_the_registry_alone_is_planned_like_the_others(fresh_directory, tmp_path):
    folder = registry_copy(tmp_path / "registries")
    benchmarks, methods = registry("benchmarks", folder), registry("methods", folder)
    benchmarks["davis17copy"] = {**benchmarks["davis17"], "description": "DAVIS-2017 val under another name"}
    methods["random_r18"]["benchmarks"]["davis17copy"] = methods["random_r18"]["benchmarks"]["davis17"]
    (folder / "benchmarks.yaml").write_text(yaml.safe_dump(benchmarks, sort_keys=False))
    (folder / "methods.yaml").write_text(yaml.safe_dump(methods, sort_keys=False))
    overlay_file = tmp_path / "overlay.yaml"
    overlay_file.write_text(yaml.safe_dump({"registries": str(folder)}))
    done = snakemake("-n", "results/davis17copy/random_r18.json", "--configfile", str(REPO / "config/config.yaml"),
                     str(overlay_file), cwd=fresh_directory)
    assert done.returncode == 0, done.stdout
    assert planned_jobs(done.stdout)[("score", "davis17copy", "random_r18", None)] == 1
    assert "vcorr propagate --benchmark davis17copy --data-root resources/data/davis17/DAVIS" in done.stdout
    assert "vcorr score davis --benchmark davis17copy --data-root resources/data/davis17/DAVIS" in done.stdout


# --- the tiny configuration, run for real ----------------------------------------------------


def tiny_pairs(workspace: TinyWorkspace) -> list[tuple[str, str]]:
    evaluate = yaml.safe_load((TINY / "config/config.yaml").read_text())["evaluate"]
    return [(b, m) for b in evaluate["benchmarks"] for m in evaluate["methods"]]


@pytest.mark.slow
@pytest.mark.workflow_run
def test_tiny_configuration_runs_end_to_end(tiny_run):
    workspace, done = tiny_run
    assert done.returncode == 0, done.stdout[-6000:]
    root = workspace.root
    benchmarks = registry("benchmarks")
    for benchmark, method in tiny_pairs(workspace):
        result = json.loads((root / "results" / benchmark / f"{method}.json").read_text())
        assert (result["benchmark"], result["method"]) == (benchmark, method)
        provenance = result["provenance"]
        # The commit of the checkout that ran (the session's copy of this one).
        head = subprocess.run(["git", "-C", str(workspace.checkout), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        assert provenance["git"]["commit"] == head and provenance["git"]["dirty"] is False
        assert provenance["settings"]["protocol"] == "crw"
        assert provenance["timings"]["propagate_s"] > 0
        checkpoints = provenance["checkpoints"]
        if method == "tiny_crw":
            weights = root / "resources/data/crw/pretrained.pth"
            assert [c["sha256"] for c in checkpoints] == [sha256(weights)]
        else:
            assert checkpoints == []
        if benchmarks[benchmark]["scorer"] == "server":
            assert result["scores"] is None and result["status"] == "awaiting server evaluation"
            assert result["submission"]["upload_to"] == benchmarks[benchmark]["server"]["url"]
            assert (root / result["submission"]["archive"]).is_file()
        else:
            assert result["status"] == "scored" and result["headline"]
    summary = (root / "results/summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(tiny_pairs(workspace))
    assert summary[0].startswith("benchmark,method,status,")
    # Sharded propagation: ytvos18 in two jobs per method, both gathered into the archive.
    for method in ("tiny_random", "tiny_crw"):
        for shard in ("shard-0-of-2", "shard-1-of-2"):
            assert (root / "results/predictions/ytvos18" / method / shard).is_dir()
    # Every job wrote its log; heavy ones their timings.
    assert (root / "logs/propagate/davis17/tiny_crw.all.log").stat().st_size > 0
    assert (root / "logs/benchmarks/score/jhmdb/tiny_random.tsv").is_file()


def report_entries(archive: Path) -> dict[str, list[str]]:
    """{file name: [its paths]} of the outputs a `snakemake --report report.zip` archive holds
    (data/raw/<id>/<name>), and its report page."""
    entries: dict[str, list[str]] = {}
    with zipfile.ZipFile(archive) as opened:
        for name in opened.namelist():
            if "/data/raw/" in name:
                entries.setdefault(Path(name).name, []).append(name)
        assert f"{archive.stem}/report.html" in opened.namelist()
        page = opened.read(f"{archive.stem}/report.html").decode()
    return entries, page


@pytest.mark.slow
def test_snakemakes_report_holds_the_tables_results_figures_and_their_labels(tiny_run):
    workspace, first = tiny_run
    assert first.returncode == 0
    archive = workspace.root / "report.zip"
    done = workspace.run("--report", str(archive), "all", *TRAINED, "results/cross_protocol.csv", *REPORTED)
    assert done.returncode == 0, done.stdout[-3000:]
    entries, page = report_entries(archive)
    results = list(csv.DictReader((workspace.root / "results/cross_protocol.csv").open()))
    evaluated = {row["result"] for row in results if row["result"]} | {f"results/{b}/{m}.json" for b, m in tiny_pairs(workspace)}
    evaluated |= {f"results/{target.split('/', 1)[1]}" for target in TRAINED}
    # Tables, chart and page; every result JSON; the training curves and the overlay asked for.
    for name in ("summary.csv", "cross_protocol.csv", "scores.png", "report.html", "tiny_moco.png", "tiny_hvc.png",
                 "blackswan.png"):
        assert len(entries.get(name, [])) == 1, (name, sorted(entries))
    assert sum(len(paths) for name, paths in entries.items() if name.endswith(".json")) == len(evaluated)
    for category in ("Summary", "Results", "Training", "Overlays"):
        assert f'"{category}"' in page, category
    assert '"labels": {"benchmark": "davis17", "method": "tiny_crw", "protocol": "stt"}' in page
    assert '"labels": {"benchmark": "davis17", "method": "tiny_crw", "protocol": "crw", "sequence": "blackswan"}' in page
    assert '"labels": {"model": "tiny_moco", "training": "moco"}' in page


@pytest.mark.slow
def test_cross_protocol_table_lists_every_method_protocol_and_benchmark(tiny_run):
    workspace, first = tiny_run
    assert first.returncode == 0
    root = workspace.root
    rows = list(csv.DictReader((root / "results/cross_protocol.csv").open()))
    local = [b for b in ("davis17", "jhmdb", "vip", "ytvos18") if registry("benchmarks")[b]["scorer"] != "server"]
    assert [(r["benchmark"], r["method"], r["protocol"]) for r in rows] == [
        (b, m, p) for b in local for m in ("tiny_random", "tiny_crw") for p in ("crw", "stt", "dino")
    ]
    summary = {(r["benchmark"], r["method"]): r for r in csv.DictReader((root / "results/summary.csv").open())}
    methods = registry("methods", workspace.registries)
    references = {"stt": "tiny_stt", "dino": "tiny_dino"}
    for row in rows:
        if (row["benchmark"], row["protocol"]) == ("jhmdb", "dino"):  # no keypoint task under dino
            assert row["status"] == "not evaluated" and "defines no jhmdb task" in row["note"], row
            continue
        assert row["status"] == "scored", row
        result = json.loads((root / row["result"]).read_text())
        settings = result["provenance"]["settings"]
        assert settings["protocol"] == row["protocol"]
        if row["protocol"] == "crw":  # the method's own: the summary's cell
            assert row["settings"] == "own" and row["result"] == summary[row["benchmark"], row["method"]]["result"]
        else:  # the reference's settings, the method's own encoder (a CNN under DINO's protocol too)
            assert row["settings"] == references[row["protocol"]]
            reference = methods[references[row["protocol"]]]["benchmarks"][row["benchmark"]]
            assert {key: settings[key] for key in reference} == reference
            assert result["provenance"]["method"]["encoders"] == methods[row["method"]]["encoders"]
    # The stt and dino protocols really ran: their predictions differ from the crw ones somewhere.
    ours = {(r["benchmark"], r["method"], r["protocol"]): r for r in rows}
    for protocol in ("stt", "dino"):
        assert any(ours[b, m, "crw"]["result"] != ours[b, m, protocol]["result"] and
                   [v for k, v in ours[b, m, "crw"].items() if k not in ("protocol", "settings", "result")]
                   != [v for k, v in ours[b, m, protocol].items() if k not in ("protocol", "settings", "result")]
                   for b in local if (b, protocol) != ("jhmdb", "dino") for m in ("tiny_random", "tiny_crw"))


@pytest.mark.slow
def test_the_field_table_sets_every_cell_beside_the_published_numbers(tiny_run):
    workspace, first = tiny_run
    assert first.returncode == 0, first.stdout[-6000:]
    root = workspace.root
    rows = list(csv.DictReader((root / "results/tables/field.csv").open()))
    cross = {(r["benchmark"], r["method"], r["protocol"]): r for r in csv.DictReader((root / "results/cross_protocol.csv").open())}
    table = {(r["benchmark"], r["method"], r["protocol"]): r for r in rows}
    assert len(table) == len(rows)
    # The three protocols on every locally scored benchmark: the cross-protocol table's cells.
    assert {key for key in table if key[1] != "tiny_unreleased" and key[0] != "ytvos18"} == set(cross)
    assert {protocol for _, _, protocol in table} == {"crw", "stt", "dino"}
    for key, row in cross.items():
        assert table[key]["status"] == row["status"] and table[key]["result"] == row["result"]
        scale = 100 if key[0] == "davis17" else 1  # DAVIS's scorer gives fractions, the table percent
        for metric in ("J&F-Mean", "PCK@0.1", "mIoU"):
            if row.get(metric):
                assert float(table[key][metric]) == pytest.approx(float(row[metric]) * scale, abs=0.005)
    own = table["davis17", "tiny_crw", "crw"]
    assert float(own["J&F-Mean published"]) == 50.0
    assert float(own["J&F-Mean difference"]) == pytest.approx(float(own["J&F-Mean"]) - 50.0, abs=0.01)
    assert table["ytvos18", "tiny_crw", "crw"]["status"] == "not evaluated"
    assert table["davis17", "tiny_unreleased", "stt"]["note"].startswith("no public weights")
    # config report.tables puts it in `all` and on the page, under its title.
    planned = workspace.run("-n", "all", overlay={"report": {"page": True, "tables": ["field"]}})
    assert planned.returncode == 0, planned.stdout
    assert "--table 'The tiny field=results/tables/field.csv'" in planned.stdout


@pytest.mark.slow
def test_the_agreement_target_compares_a_release_archive_with_vcorrs_predictions(tiny_run, tiny_mirror, tmp_path):
    import io
    import zipfile

    from PIL import Image

    from vcorr.evaluation.scoring import score_davis
    from vcorr.io import read_index_png

    workspace, first = tiny_run
    assert first.returncode == 0
    workspace = fork_workspace(workspace, tmp_path / "fork")
    root = workspace.root
    predictions = root / "results/predictions/davis17/tiny_crw/all"
    # The authors' archive: their masks are vcorr's predictions with 5 rows of one frame changed and
    # one frame not released, greyscale PNGs (HVC's imageio) two folders down, as published.yaml says.
    members, expected = {}, {}
    for path in sorted(predictions.glob("*/*.png")):
        ids = read_index_png(path)
        sequence = path.parent.name
        if (sequence, path.stem) == ("blackswan", "00003"):
            continue
        if (sequence, path.stem) == ("blackswan", "00002"):
            changed = ids.copy()
            changed[:5] = np.where(ids[:5] == 1, 2, 1)
            expected[sequence, path.stem] = float(np.mean(changed == ids))
            ids = changed
        else:
            expected[sequence, path.stem] = 1.0
        buffer = io.BytesIO()
        Image.fromarray(ids, mode="L").save(buffer, format="PNG")
        members[f"tiny_crw/davis17_vos/{sequence}/{path.name}"] = buffer.getvalue()
    mirror, _ = tiny_mirror
    archive = mirror / "tiny_crw_masks" / "tiny_crw_masks.zip"
    archive.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(archive, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)

    target = "results/davis17/tiny_crw.agreement.json"
    planned = workspace.run("-n", target)
    assert planned.returncode == 0, planned.stdout
    # The release is fetched and unpacked; vcorr's predictions are the run's, not redone.
    assert rule_counts(planned.stdout) == Counter({"fetch_tiny_crw_masks": 1, "extract": 1, "agreement": 1})
    done = workspace.run("--cores", "1", target)
    assert done.returncode == 0, done.stdout[-6000:]
    report = json.loads((root / target).read_text())
    found = {(sequence, frame): value for sequence, entry in report["per_sequence"].items()
             for frame, value in entry["frames"].items()}
    assert found == pytest.approx(expected) and expected["blackswan", "00002"] < 1
    assert report["per_sequence"]["blackswan"]["missing"] == ["00003"] and report["frames_missing"] == 1
    assert report["frames"] == len(expected)
    # Both J&F by vcorr's scorer: vcorr's is the run's score, the authors' that of their folder.
    scores = json.loads((root / "results/scores/davis17/tiny_crw.json").read_text())["global"]
    assert report["scores"]["vcorr"]["J&F-Mean"] == pytest.approx(scores["J&F-Mean"])
    masks = root / "resources/data/tiny_crw_masks/tiny_crw/davis17_vos"
    theirs = score_davis(root / "resources/data/davis17/DAVIS", masks, csv_dir=tmp_path / "csv")
    assert report["scores"]["authors"]["J&F-Mean"] == pytest.approx(theirs["J&F-Mean"])
    assert report["scores"]["difference"]["J&F-Mean"] == pytest.approx(scores["J&F-Mean"] - theirs["J&F-Mean"])
    # A method without released masks has no such target.
    refused = workspace.run("-n", "results/davis17/tiny_random.agreement.json")
    assert refused.returncode != 0 and "no released masks of tiny_random on davis17" in refused.stdout


@pytest.mark.slow
def test_second_run_has_nothing_to_do(tiny_run):
    workspace, first = tiny_run
    assert first.returncode == 0
    done = workspace.run("-n")
    assert done.returncode == 0, done.stdout
    assert "Nothing to be done" in done.stdout, done.stdout
    assert not planned_jobs(done.stdout)


@pytest.mark.slow
def test_changing_one_benchmarks_parameter_reruns_only_its_propagation_and_scoring(tiny_run):
    workspace, first = tiny_run
    assert first.returncode == 0
    done = workspace.run("-n", overlay={"propagation": {"set": {"davis17": {"topk": 3}}}})
    assert done.returncode == 0, done.stdout
    assert planned_jobs(done.stdout) == Counter({
        ("propagate", "davis17", "tiny_random", "all"): 1, ("propagate", "davis17", "tiny_crw", "all"): 1,
        ("score", "davis17", "tiny_random", None): 1, ("score", "davis17", "tiny_crw", None): 1,
        ("result", "davis17", "tiny_random", None): 1, ("result", "davis17", "tiny_crw", None): 1,
        ("summary", None, None, None): 1, ("all", None, None, None): 1,
    })


@pytest.mark.slow
def test_editing_one_methods_registry_settings_reruns_only_that_pair(tiny_run):
    workspace, first = tiny_run
    assert first.returncode == 0
    methods_file = workspace.registries / "methods.yaml"
    original = methods_file.read_text()
    methods = yaml.safe_load(original)
    # The two methods share their settings through a YAML anchor: edit a copy for tiny_crw only.
    tiny_crw = methods["tiny_crw"]["benchmarks"] = copy.deepcopy(methods["tiny_crw"]["benchmarks"])
    tiny_crw["jhmdb"]["radius"] = 3
    try:
        methods_file.write_text(yaml.safe_dump(methods))
        done = workspace.run("-n")
    finally:
        methods_file.write_text(original)
    assert done.returncode == 0, done.stdout
    assert planned_jobs(done.stdout) == Counter({
        ("propagate", "jhmdb", "tiny_crw", "all"): 1, ("score", "jhmdb", "tiny_crw", None): 1,
        ("result", "jhmdb", "tiny_crw", None): 1, ("summary", None, None, None): 1, ("all", None, None, None): 1,
    })


class EditedCode:
    """An edit of the tiny run's checkout (a line appended to one vcorr module), put back on exit."""

    def __init__(self, workspace: TinyWorkspace, module: str, line: str):
        self.path = workspace.checkout / "vcorr" / module
        self.line = line

    def __enter__(self):
        self.original = self.path.read_text()
        self.path.write_text(self.original + f"\n{self.line}\n")
        return self

    def __exit__(self, *exc) -> None:
        self.path.write_text(self.original)


def downstream_of_propagation(workspace: TinyWorkspace, benchmarks=None) -> Counter:
    """Every job a rerun of the tiny run's propagations on `benchmarks` (default all) plans."""
    jobs = Counter({("summary", None, None, None): 1, ("all", None, None, None): 1})
    for benchmark, method in tiny_pairs(workspace):
        if benchmarks is not None and benchmark not in benchmarks:
            continue
        if benchmark == "ytvos18":
            jobs.update({("propagate", benchmark, method, f"shard-{i}-of-2"): 1 for i in range(2)})
            jobs.update({("export", benchmark, method, None): 1})
        else:
            jobs.update({("propagate", benchmark, method, "all"): 1, ("score", benchmark, method, None): 1})
        jobs.update({("result", benchmark, method, None): 1})
    return jobs


@pytest.mark.slow
@pytest.mark.parametrize(("module", "line", "stale"), [
    # heatmaps_to_coords' module: JHMDB coordinates are decoded during propagation (and scored).
    ("metrics/pck.py", "heatmaps_to_coords.__doc__ = None", "predictions"),
    # One scorer's code: its scorings only, every propagation stays.
    ("metrics/davis.py", "boundary_tolerance.__doc__ = None", "davis17 scores"),
    ("propagation/protocols.py", "# a comment only", "nothing"),
])
def test_a_code_change_reruns_exactly_the_stale_propagations_and_scorings(tiny_run, module, line, stale):
    workspace, first = tiny_run
    assert first.returncode == 0
    with EditedCode(workspace, module, line):
        done = workspace.run("-n")
    assert done.returncode == 0, done.stdout[-3000:]
    if stale == "nothing":
        assert "Nothing to be done" in done.stdout and not planned_jobs(done.stdout), done.stdout[-3000:]
        return
    if stale == "predictions":
        assert planned_jobs(done.stdout) == downstream_of_propagation(workspace)
    else:
        assert planned_jobs(done.stdout) == Counter({
            ("score", "davis17", "tiny_random", None): 1, ("score", "davis17", "tiny_crw", None): 1,
            ("result", "davis17", "tiny_random", None): 1, ("result", "davis17", "tiny_crw", None): 1,
            ("summary", None, None, None): 1, ("all", None, None, None): 1,
        })


@pytest.mark.slow
def test_a_training_code_change_flags_the_results_and_retrains_nothing(tiny_run, tmp_path):
    workspace, first = tiny_run
    assert first.returncode == 0
    workspace = fork_workspace(workspace, tmp_path / "fork")
    target = "results/davis17/tiny_hvc.json"
    with EditedCode(workspace, "train/hvc.py", "VARIANTS = tuple(VARIANTS)"):
        planned = workspace.run("-n", target)
        assert planned_jobs(planned.stdout) == Counter({("result", "davis17", "tiny_hvc", None): 1}), planned.stdout[-3000:]
        done = workspace.run("--cores", "1", target)
    assert done.returncode == 0, done.stdout[-3000:]
    result = json.loads((workspace.root / target).read_text())
    assert result["note"].startswith("model trained by other code: results/models/tiny_hvc.pth")
    (stale,) = result["provenance"]["trained_by_other_code"]
    assert stale["method"] == "hvc" and stale["current"] not in stale["trained_with"]
    assert "--forcerun train" in result["note"]


@pytest.mark.slow
def test_replacing_a_weights_file_reruns_what_used_it_and_a_concurrent_run_is_locked_out(tiny_run, tmp_path):
    workspace, first = tiny_run
    assert first.returncode == 0
    workspace = fork_workspace(workspace, tmp_path / "fork")
    root = workspace.root
    weights = root / "resources/data/crw/pretrained.pth"
    load_builder().write_crw_checkpoint(weights, seed=1)
    planned = workspace.run("-n")
    assert planned.returncode == 0, planned.stdout
    jobs = planned_jobs(planned.stdout)
    expected = Counter()
    for benchmark in ("davis17", "jhmdb", "vip"):
        expected.update({("propagate", benchmark, "tiny_crw", "all"): 1, ("score", benchmark, "tiny_crw", None): 1})
    expected.update({("propagate", "ytvos18", "tiny_crw", f"shard-{i}-of-2"): 1 for i in range(2)})
    expected.update({("export", "ytvos18", "tiny_crw", None): 1})
    expected.update({("result", b, "tiny_crw", None): 1 for b in ("davis17", "jhmdb", "vip", "ytvos18")})
    expected.update({("summary", None, None, None): 1, ("all", None, None, None): 1})
    assert jobs == expected

    # Run it, and start a second run on the same directory while the first holds the lock.
    summary_before = (root / "results/summary.csv").read_text()
    checkout = workspace.checkout
    command = [sys.executable, "-m", "snakemake", "-s", str(checkout / "workflow/Snakefile"), "--workflow-profile",
               str(checkout / "profiles/default"), "--cores", "2", *workspace.config_files()]
    first_run = subprocess.Popen(command, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        locks = root / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())):
            assert first_run.poll() is None, first_run.stdout.read()
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        second = workspace.run("--cores", "1")
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout, second.stdout
        output, _ = first_run.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if first_run.poll() is None:
            first_run.kill()
    assert first_run.returncode == 0, output[-6000:]

    new_sha = sha256(weights)
    for benchmark in ("davis17", "jhmdb", "vip", "ytvos18"):
        result = json.loads((root / f"results/{benchmark}/tiny_crw.json").read_text())
        assert [c["sha256"] for c in result["provenance"]["checkpoints"]] == [new_sha]
    assert (root / "results/summary.csv").read_text().count("\n") == summary_before.count("\n")
    assert "Nothing to be done" in workspace.run("-n").stdout


@pytest.mark.slow
def test_a_failing_job_leaves_no_partial_output_and_a_log_naming_the_cause(tiny_run, tmp_path):
    workspace, first = tiny_run
    assert first.returncode == 0
    workspace = fork_workspace(workspace, tmp_path / "fork")
    root = workspace.root
    frames = sorted((root / "resources/data/vip/VIP_Fine/Images/videos2").glob("*.jpg"))
    broken = frames[-1]
    original = broken.read_bytes()
    target = "results/predictions/vip/tiny_random/all"
    try:
        # Truncated: its header reads, so the job fails half way, after writing videos1.
        broken.write_bytes(original[: len(original) // 3])
        done = workspace.run(target, "--cores", "1", "--forcerun", target)
    finally:
        broken.write_bytes(original)
    assert done.returncode != 0
    assert not (root / target).exists(), "the failed job's output folder was left behind"
    assert not list((root / target).parent.glob(".*tmp*"))
    log = (root / "logs/propagate/vip/tiny_random.all.log").read_text()
    assert broken.name in log, log


@pytest.mark.slow
def test_a_download_with_a_known_sha256_is_ensured_and_retried(tiny_mirror, tmp_path):
    """A file of datasets.yaml with a sha256: the fetch rule's output carries ensure(sha256=...)
    and retries. The right hash fetches; a wrong one fails each of the 1 + 2 attempts and leaves
    no file (vcorr's own check and Snakemake's agree on it)."""
    mirror, url = tiny_mirror
    workspace = make_tiny_workspace(tmp_path / "workspace", mirror, url)
    datasets = registry("datasets", workspace.registries)
    good, bad = datasets["crw"]["files"][0], datasets["jhmdb"]["files"][0]
    good["sha256"] = sha256(mirror / "crw" / good["name"])
    bad["sha256"] = "0" * 64
    (workspace.registries / "datasets.yaml").write_text(yaml.safe_dump(datasets, sort_keys=False))
    targets = [f"resources/downloads/crw/{good['name']}", f"resources/downloads/jhmdb/{bad['name']}"]
    done = workspace.run("--cores", "1", "--keep-going", *targets)
    assert done.returncode != 0
    fetched = workspace.root / targets[0]
    assert fetched.read_bytes() == (mirror / "crw" / good["name"]).read_bytes()
    assert not (workspace.root / targets[1]).exists()
    assert done.stdout.count("Trying to restart job") == 2, done.stdout[-3000:]
    assert "Error in rule fetch_jhmdb" in done.stdout and "Error in rule fetch_crw" not in done.stdout
