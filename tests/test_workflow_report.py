"""`vcorr report`: results with provenance, server-scored results, the summary table."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest

from vcorr.cli import main
from vcorr.errors import VcorrError
from vcorr.config import load_registry
from vcorr.report.results import build_result, find_headlines, read_timing, write_summary

TINY_REGISTRIES = Path(__file__).resolve().parents[1] / ".test" / "config"
TIMING_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


@pytest.fixture(autouse=True)
def tiny_registries(monkeypatch):
    monkeypatch.setenv("VCORR_CONFIG_DIR", str(TINY_REGISTRIES))


def timing_file(path: Path, seconds: float, rss: float = 100.0) -> Path:
    path.write_text(TIMING_HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t1\t{seconds}\n")
    return path


def test_scored_result_carries_scores_and_provenance(tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"global": {"J&F-Mean": 61.5, "J-Mean": 60.0, "F-Mean": 63.0, "J-Decay": 1.0}}))
    weights = tmp_path / "pretrained.pth"
    weights.write_bytes(b"weights")
    result = build_result(
        benchmark="davis17", method_name="tiny_crw", evaluation=scores, weights=[weights],
        propagate_timings=[timing_file(tmp_path / "p.tsv", 12.5, rss=700)],
        evaluate_timings=[timing_file(tmp_path / "s.tsv", 2.0)], overrides=["topk=3"],
    )
    assert result["status"] == "scored"
    assert result["headline"] == {"J&F-Mean": 61.5, "J-Mean": 60.0, "F-Mean": 63.0}
    assert result["scores"]["global"]["J-Decay"] == 1.0
    provenance = result["provenance"]
    assert provenance["settings"]["topk"] == 3 and provenance["overrides"] == {"topk": 3}
    assert provenance["settings"]["cxt_size"] == load_registry("methods")["tiny_crw"]["benchmarks"]["davis17"]["cxt_size"]
    assert provenance["method"]["encoders"][0]["weights"]["format"] == "crw"
    assert provenance["benchmark"]["scorer"] == "davis"
    assert provenance["checkpoints"] == [
        {"path": str(weights), "sha256": hashlib.sha256(b"weights").hexdigest(), "bytes": 7}
    ]
    assert provenance["timings"] == {"propagate_s": 12.5, "propagate_jobs": 1, "propagate_max_rss_mb": 700.0,
                                     "evaluate_s": 2.0}
    assert provenance["vcorr_version"]
    commit = provenance["git"]["commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)


def test_server_scored_result_says_where_to_upload_and_reports_no_score(tmp_path):
    archive = tmp_path / "tiny_random.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("Annotations/v/00000.png", b"png")
    shards = [timing_file(tmp_path / f"shard{i}.tsv", 3.0) for i in range(2)]
    result = build_result(benchmark="ytvos18", method_name="tiny_random", evaluation=archive,
                          propagate_timings=shards)
    assert result["status"] == "awaiting server evaluation"
    assert result["scores"] is None and "headline" not in result
    submission = result["submission"]
    assert submission["upload_to"] == load_registry("benchmarks")["ytvos18"]["server"]["url"]
    assert submission["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert result["provenance"]["timings"]["propagate_s"] == 6.0
    assert result["provenance"]["timings"]["propagate_jobs"] == 2


def test_server_scored_benchmark_refuses_a_scores_file(tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"global": {"J&F-Mean": 99.0}}))
    with pytest.raises(VcorrError, match="evaluation server"):
        build_result(benchmark="ytvos18", method_name="tiny_random", evaluation=scores)


def test_scores_without_the_benchmarks_headline_are_refused(tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"global": {"mIoU": 40.0}}))
    with pytest.raises(VcorrError, match=r"scores.json: none of J&F-Mean"):
        build_result(benchmark="davis17", method_name="tiny_random", evaluation=scores)


def test_headlines_are_found_at_the_top_or_one_level_down():
    assert find_headlines({"PCK@0.1": 50.0, "PCK@0.2": 70}, ["PCK@0.1", "PCK@0.2"]) == {"PCK@0.1": 50.0, "PCK@0.2": 70}
    assert find_headlines({"unit": "percent", "global": {"mIoU": 33.0}}, ["mIoU"]) == {"mIoU": 33.0}
    assert find_headlines({"global": {"mIoU": "n/a"}}, ["mIoU"]) == {}


def test_a_file_that_is_not_a_timing_table_is_named(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("seconds\n3\n")
    with pytest.raises(VcorrError, match="bad.tsv: not a benchmark TSV"):
        read_timing(bad)


def test_summary_has_one_row_per_result_and_the_union_of_headlines(tmp_path):
    scored = {"benchmark": "davis17", "method": "a", "status": "scored", "headline": {"J&F-Mean": 0.6}}
    pck = {"benchmark": "jhmdb", "method": "a", "status": "scored", "headline": {"PCK@0.1": 45.0, "PCK@0.2": 70.0}}
    server = {"benchmark": "ytvos18", "method": "a", "status": "awaiting server evaluation",
              "submission": {"archive": "results/ytvos18/a.zip", "upload_to": "https://example.org/upload"},
              "note": "model trained by other code: results/models/a.pth"}
    files = []
    for index, result in enumerate((scored, pck, server)):
        files.append(tmp_path / f"{index}.json")
        files[-1].write_text(json.dumps(result))
    out = tmp_path / "summary.csv"
    assert main(["report", "summary", *map(str, files), "--out", str(out)]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Every headline in percent, the unit in the column: DAVIS's fraction x100, PCK as the scorer wrote it.
    assert list(rows[0]) == ["benchmark", "method", "status", "J&F-Mean (%)", "PCK@0.1 (%)", "PCK@0.2 (%)",
                             "archive", "upload_to", "result", "note"]
    assert [row["benchmark"] for row in rows] == ["davis17", "jhmdb", "ytvos18"]
    assert rows[0]["J&F-Mean (%)"] == "60.0" and rows[0]["PCK@0.1 (%)"] == "" and rows[1]["PCK@0.1 (%)"] == "45.0"
    assert rows[2]["upload_to"] == "https://example.org/upload" and rows[2]["J&F-Mean (%)"] == ""
    assert [row["note"] for row in rows] == ["", "", "model trained by other code: results/models/a.pth"]


def test_cli_names_a_missing_scores_file_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["report", "result", "--benchmark", "davis17", "--method", "tiny_random",
                 "--evaluation", str(tmp_path / "missing.json"), "--out", str(out)])
    assert code == 2
    assert "missing.json: missing" in capsys.readouterr().err
    assert not out.exists()


def test_summary_refuses_a_file_that_is_not_a_result(tmp_path):
    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps({"J&F-Mean": 1}))
    with pytest.raises(VcorrError, match="stray.json: not a vcorr result"):
        write_summary([stray], tmp_path / "summary.csv")
    assert not (tmp_path / "summary.csv").exists()


def test_official_crosscheck_says_how_to_get_the_official_tool(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_davis2017(name, *args, **kwargs):
        if name.startswith("davis2017"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_davis2017)
    from vcorr.report.results import crosscheck_davis

    with pytest.raises(VcorrError, match="davis2017-eval.yaml"):
        crosscheck_davis(tmp_path, tmp_path, "val", tmp_path / "scores.json")
