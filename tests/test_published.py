"""The published numbers (config/published.yaml), the tables beside them and the agreement with a
release's own masks (vcorr.report.published, .tables, .agreement); the workflow runs are in
test_workflow.py."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vcorr.config import schema_error
from vcorr.errors import VcorrError
from vcorr.io import write_index_png
from vcorr.evaluation.cross_protocol import cross_protocol_cells
from vcorr.report.agreement import agreement_report
from vcorr.report.published import check_published, numbers, table_cells, table_methods
from vcorr.report.results import HEADLINES
from vcorr.report.tables import write_published_table

REPO = Path(__file__).resolve().parents[1]


def registry(name: str, folder: Path = REPO / "config") -> dict:
    return yaml.safe_load((folder / f"{name}.yaml").read_text())


@pytest.fixture(scope="module")
def registries() -> dict:
    return {name: registry(name) for name in ("published", "methods", "benchmarks", "datasets", "protocols")}


@pytest.mark.parametrize("folder", [REPO / "config", REPO / ".test" / "config"], ids=["config", "tiny"])
def test_the_registries_conform_to_the_schema_and_name_registry_methods(folder):
    published = registry("published", folder)
    assert schema_error(published, REPO / "workflow" / "schemas" / "published.schema.yaml") is None
    methods = registry("methods", folder)
    benchmarks = registry("benchmarks", folder) if (folder / "benchmarks.yaml").exists() else registry("benchmarks")
    check_published(published, methods, benchmarks, registry("datasets", folder), str(folder / "published.yaml"))
    # Every name is a method of methods.yaml, or listed with the reason it cannot be evaluated.
    for name, entry in published["methods"].items():
        assert (name in methods) != ("listed" in entry), name


def test_published_metrics_are_the_scorers_headlines(registries):
    benchmarks = registries["benchmarks"]
    for number in numbers(registries["published"], registries["methods"]):
        scorer = benchmarks[number.benchmark]["scorer"]
        if scorer != "server":
            assert set(number.values) <= set(HEADLINES[scorer]), number


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p["methods"].__setitem__("vfs_r19", {"numbers": []}), r"methods\.vfs_r19: not a method of methods\.yaml"),
    (lambda p: p["methods"]["liir"].pop("listed"), r"methods\.liir: not a method of methods\.yaml"),
    (lambda p: p["methods"]["vfs_r18"].__setitem__("listed", "x"), r"methods\.vfs_r18: a method of methods\.yaml"),
    (lambda p: p["methods"]["vfs_r18"]["numbers"][0].__setitem__("source", "vfs_paper"),
     r"vfs_r18\.numbers\.0\.source: 'vfs_paper' is not a source"),
    (lambda p: p["methods"]["vfs_r18"]["numbers"][0]["values"].__setitem__("J&F", 1.0),
     r"vfs_r18\.numbers\.0\.values\.J&F: not a metric of davis17's scorer"),
    (lambda p: p["methods"]["vfs_r18"].__setitem__("masks", {"davis17": {"id": "hvc_masks_coco", "root": "."}}) or
     p["methods"]["dul_ytvos"].__setitem__("masks", {"vip": {"id": "hvc_masks_coco", "root": "."}}),
     r"dul_ytvos\.masks\.vip: method dul_ytvos has no settings for vip"),
    (lambda p: p["tables"]["hvc"]["methods"].append("mast"), r"tables\.hvc\.methods: 'mast' is neither"),
])
def test_registry_mistakes_are_refused_naming_the_key(registries, change, message):
    published = copy.deepcopy(registries["published"])
    change(published)
    with pytest.raises(VcorrError, match=message):
        check_published(published, registries["methods"], registries["benchmarks"], registries["datasets"], "published.yaml")


def test_the_field_table_has_every_released_method_under_every_protocol(registries):
    published, methods, benchmarks = registries["published"], registries["methods"], registries["benchmarks"]
    field = published["tables"]["field"]
    chosen = table_methods(field, published, methods)
    trained = {name for name, entry in methods.items()
               if any("path" in (encoder.get("weights") or {}) for encoder in entry["encoders"])}
    on_benchmarks = {name for name, entry in methods.items() if set(entry["benchmarks"]) & set(field["benchmarks"])}
    assert set(chosen) == (on_benchmarks - trained) | {"liir"}
    assert {"vfs_r18", "vfs_r50", "dul_ytvos", "sfc", "imagenet_r18", "imagenet_r50", "mocov2_r50", "dino_r50",
            "crw_release", "hvc_release_coco", "dino_vits16"} <= set(chosen)
    cells = table_cells("field", published, methods, registries["protocols"], benchmarks)
    by_key = {(cell.benchmark, cell.method, cell.protocol): cell for cell in cells}
    assert len(by_key) == len(cells)
    local = [b for b in field["benchmarks"] if benchmarks[b]["scorer"] != "server"]
    tasks = {name: entry["task"] for name, entry in benchmarks.items()}
    evaluated = [m for m in chosen if m in methods]
    # The locally scored benchmarks: exactly the cross-protocol cells.
    expected = cross_protocol_cells(evaluated, local, methods, registries["protocols"], tasks)
    assert [cell for cell in cells if cell.benchmark in local and cell.method in methods] == expected
    # A server-scored benchmark: one own-protocol row per method with settings, not evaluated.
    ytvos = [cell for cell in cells if cell.benchmark == "ytvos18" and cell.method in methods]
    assert {cell.method for cell in ytvos} == {m for m in evaluated if "ytvos18" in methods[m]["benchmarks"]}
    assert all(cell.evaluated_as is None and "evaluation server" in cell.note for cell in ytvos)
    # VFS publishes DAVIS only: its own protocol has no JHMDB settings, crw's reference has.
    assert by_key["jhmdb", "vfs_r18", "stt"].evaluated_as is None
    assert by_key["jhmdb", "vfs_r18", "crw"].evaluated_as == "vfs_r18@crw"
    # LIIR: listed once per benchmark under its protocol, with the reason.
    liir = [cell for cell in cells if cell.method == "liir"]
    assert [cell.benchmark for cell in liir] == field["benchmarks"]
    assert all(cell.evaluated_as is None and "no public weights" in cell.note for cell in liir)


def test_a_paper_table_lists_each_method_under_its_own_protocol(registries):
    published, methods = registries["published"], registries["methods"]
    cells = table_cells("stt", published, methods, registries["protocols"], registries["benchmarks"])
    assert {(cell.method, cell.protocol) for cell in cells} == {
        (m, methods[m]["protocol"] if m in methods else published["methods"][m]["protocol"])
        for m in published["tables"]["stt"]["methods"]}
    evaluated = {(cell.benchmark, cell.method) for cell in cells if cell.evaluated_as}
    assert ("davis17", "vfs_r18") in evaluated and ("vip", "stt_release_r18_s4") in evaluated
    assert ("jhmdb", "vfs_r18") not in evaluated  # VFS has no JHMDB settings


def _result(folder: Path, benchmark: str, method: str, headline: dict) -> Path:
    path = folder / benchmark / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": benchmark, "method": method, "status": "scored", "headline": headline}))
    return path


def test_the_table_sets_vcorrs_percent_beside_the_published_number(tmp_path):
    tiny = REPO / ".test" / "config"
    published, methods, protocols = registry("published", tiny), registry("methods", tiny), registry("protocols", tiny)
    benchmarks = registry("benchmarks")
    cells = table_cells("field", published, methods, protocols, benchmarks)
    results = []
    for cell in cells:
        if cell.evaluated_as:
            headline = ({"J&F-Mean": 0.5125, "J-Mean": 0.4, "F-Mean": 0.625} if cell.benchmark == "davis17"
                        else {"mIoU": 41.25} if cell.benchmark == "vip" else {"PCK@0.1": 30.0, "PCK@0.2": 50.0})
            results.append(_result(tmp_path, cell.benchmark, cell.evaluated_as, headline))
    out = tmp_path / "field.csv"
    counts = write_published_table(cells, published, methods, benchmarks, results, out)
    rows = {(row["benchmark"], row["method"], row["protocol"]): row for row in csv.DictReader(out.open())}
    assert counts == {"rows": len(cells), "evaluated": len(results), "published": 4, "compared": 2}
    own = rows["davis17", "tiny_crw", "crw"]
    # DAVIS's scorer gives fractions: in percent, as published; the difference in points.
    assert (float(own["J&F-Mean"]), float(own["J&F-Mean published"]), float(own["J&F-Mean difference"])) == (51.25, 50.0, 1.25)
    assert (float(own["J-Mean"]), float(own["J-Mean difference"])) == (40.0, -5.0)
    assert own["F-Mean"] == "62.5" and own["F-Mean published"] == "" and own["source_url"] == "http://vcorr-test.invalid/published"
    vip = rows["vip", "tiny_crw", "crw"]
    assert (float(vip["mIoU"]), float(vip["mIoU difference"])) == (41.25, 1.25)  # mIoU is a percentage already
    # The number is tiny_crw's under its own protocol: its other protocols' rows carry none.
    assert rows["davis17", "tiny_crw", "stt"]["J&F-Mean published"] == ""
    server = rows["ytvos18", "tiny_crw", "crw"]
    assert server["status"] == "not evaluated" and server["Overall published"] == "30.0" and "server" in server["note"]
    listed = rows["davis17", "tiny_unreleased", "stt"]
    assert listed["J&F-Mean published"] == "60.0" and listed["note"] == "no public weights (the tiny table's listed row)"
    assert ("jhmdb", "tiny_unreleased", "stt") not in rows  # listed where it publishes numbers only
    with pytest.raises(VcorrError, match=r"no result given for tiny_crw@dino on davis17"):
        write_published_table(cells, published, methods, benchmarks,
                              [r for r in results if r.name != "tiny_crw@dino.json" or "davis17" not in str(r)],
                              tmp_path / "partial.csv")
    assert not (tmp_path / "partial.csv").exists()


# --------------------------------------------------------------------- agreement


def _png(path: Path, ids: np.ndarray, mode: str = "L") -> None:
    """Label ids as a palette PNG (DAVIS's, vcorr's) or a greyscale one (HVC's imageio.imwrite)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        write_index_png(path, ids)
    else:
        Image.fromarray(ids.astype(np.uint8), mode="L").save(path)


def davis_tree(root: Path, sequences: dict[str, int], frames: int = 4) -> dict[str, list[np.ndarray]]:
    """A DAVIS root with square objects; {sequence: its ground-truth id maps}."""
    truth = {}
    for name, objects in sequences.items():
        truth[name] = []
        for t in range(frames):
            ids = np.zeros((24, 32), np.uint8)
            for k in range(objects):
                ids[4 + 6 * k + t: 10 + 6 * k + t, 3 + 8 * k: 11 + 8 * k] = k + 1
            truth[name].append(ids)
            _png(root / "Annotations" / "480p" / name / f"{t:05d}.png", ids, "P")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(sequences) + "\n")
    return truth


def test_agreement_counts_equal_pixels_frame_by_frame_and_scores_both_folders(tmp_path):
    truth = davis_tree(tmp_path / "DAVIS", {"bear": 2, "car": 1})
    ours, theirs = tmp_path / "ours", tmp_path / "release" / "hvc_vos"
    for name, frames in truth.items():
        for t, ids in enumerate(frames):
            _png(ours / name / f"{t:05d}.png", ids, "P")  # vcorr writes palette PNGs
            released = ids.copy()
            if (name, t) == ("bear", 2):
                released[:6, :] = 2  # 6 rows of 24 changed, where the truth is background
            if (name, t) != ("car", 3):  # a frame the authors did not release
                _png(theirs / name / f"{t:05d}.png", released)  # HVC's imageio writes greyscale
    report = agreement_report("davis17", tmp_path / "DAVIS", ours, theirs, "hvc_release_coco")
    assert report["per_sequence"]["bear"]["frames"] == {"00000": 1.0, "00001": 1.0, "00002": 0.75, "00003": 1.0}
    assert report["per_sequence"]["car"]["missing"] == ["00003"] and report["frames_missing"] == 1
    assert report["frames"] == 7
    assert report["agreement"] == pytest.approx(1 - 6 * 32 / (7 * 24 * 32))
    assert report["lowest"] == {"sequence": "bear", "frame": "00002", "agreement": 0.75}
    # J&F by vcorr's scorer: the authors' folder loses on bear's frame 2 (object 2 over background).
    assert report["scores"]["vcorr"]["J&F-Mean"] == pytest.approx(1.0)
    assert report["scores"]["authors"]["J&F-Mean"] < 1.0
    assert report["scores"]["difference"]["J&F-Mean"] == pytest.approx(1.0 - report["scores"]["authors"]["J&F-Mean"])
    assert report["per_object"]["bear_2"]["authors"]["J-Mean"] < report["per_object"]["bear_1"]["authors"]["J-Mean"] == 1.0


def test_agreement_names_the_folders_that_hold_the_sequences_when_the_root_is_wrong(tmp_path):
    truth = davis_tree(tmp_path / "DAVIS", {"bear": 1})
    archive = tmp_path / "hvc_coco"
    for t, ids in enumerate(truth["bear"]):
        _png(tmp_path / "ours" / "bear" / f"{t:05d}.png", ids)
        _png(archive / "results" / "hvc_vos" / "bear" / f"{t:05d}.png", ids)
    with pytest.raises(VcorrError, match=r"hvc_coco/bear: sequence bear is missing from the authors' masks .*"
                                         r"hold the sequences: results/hvc_vos \(set published\.yaml `masks` root"):
        agreement_report("davis17", tmp_path / "DAVIS", tmp_path / "ours", archive, "hvc_release_coco")
    _png(archive / "results" / "hvc_vos" / "bear" / "00001.png", np.zeros((12, 16)))
    with pytest.raises(VcorrError, match=r"hvc_vos/bear/00001\.png: 16x12, but vcorr's .*bear/00001\.png is 32x24"):
        agreement_report("davis17", tmp_path / "DAVIS", tmp_path / "ours", archive / "results" / "hvc_vos", "m")
