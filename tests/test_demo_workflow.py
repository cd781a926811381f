"""The offline demo (config/demo/config.yaml): the DAG it plans, and (slow) a run in a fresh copy
of the checkout: every result, the summary with a trained model and both baselines, nothing to do
on a rerun, targeted reruns after a change, and the report page in headless chromium.

The run covers three of the seven demo methods (raw pixels and the Spa-then-Temp chain, stage one
included, with stage two's initialisation), each under every protocol (the cross-protocol table),
on a reduced training budget (`REDUCED` steps), so that it stays a few minutes of the suite; the
full demo is the README's command.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.test_report_figures import chromium_binary, headless
from workflow_fixtures import files_below, fresh_checkout, registry

REPOSITORY = Path(__file__).resolve().parents[1]
DEMO_CONFIG = "config/demo/config.yaml"
BENCHMARKS = ("demo_davis", "demo_jhmdb", "demo_vip")
TRAINED = ("demo_moco", "demo_hvc", "demo_stt")
BASELINES = ("demo_pixels", *(f"{name}_init" for name in TRAINED))
PROTOCOLS = ("crw", "stt", "dino")
# Cells of a task the protocol does not define (vcorr.propagation.parameters.PROTOCOL_TASKS).
UNDEFINED = {("demo_jhmdb", "dino")}
# The slow test's subset: raw pixels and stage one -> stage two with its initialisation, each under
# every protocol, stage one and two trained a few steps each (validated at step 0 and at the end).
RUN_METHODS = ("demo_pixels", "demo_stt_init", "demo_stt")
REDUCED = 3
RUN_CONFIG = f"""
evaluate: {{methods: [{', '.join(RUN_METHODS)}]}}
training: {{set: {{workers: 0, log_every: 1, max_steps: {REDUCED}}}}}
report: {{overlays: [{{benchmark: demo_davis, method: demo_stt, sequence: coffee-2}}]}}
"""


def demo_methods() -> list[str]:
    return [name for name, entry in registry("methods").items() if set(entry["benchmarks"]) == set(BENCHMARKS)]


def evaluated_names(methods, benchmark: str) -> list[str]:
    """Each method, and each under the protocols that are not its own (`<method>@<protocol>`)
    where the protocol defines the benchmark's task."""
    own = {name: registry("methods")[name]["protocol"] for name in methods}
    return [name for name in methods] + [f"{name}@{p}" for name in methods for p in PROTOCOLS
                                         if p != own[name] and (benchmark, p) not in UNDEFINED]


def snakemake(checkout: Path, *arguments: str, configs: tuple[str, ...] = (), timeout: int = 1500) -> str:
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", DEMO_CONFIG, *configs, *arguments]
    environment = {key: value for key, value in os.environ.items() if key != "VCORR_CONFIG_DIR"}
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=timeout, env=environment)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return done.stdout + done.stderr


def planned(output: str) -> dict[str, list[str]]:
    """{rule: [output of each planned job]} from a dry run's job listing."""
    jobs: dict[str, list[str]] = {}
    for block in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", output, flags=re.M):
        rule, body = block
        found = re.search(r"^    output: (.*)$", body, flags=re.M)
        jobs.setdefault(rule, []).append(found[1] if found else "")
    return jobs


def test_demo_dry_run_plans_every_stage(tmp_path):
    checkout = fresh_checkout(tmp_path / "clone")
    jobs = planned(snakemake(checkout, "-n"))
    methods = [*BASELINES, *TRAINED]
    # Every demo method of the registry but protocols.yaml's crw reference (demo_random) is evaluated.
    assert set(demo_methods()) - {"demo_random"} == set(methods)
    assert sorted(yaml.safe_load((REPOSITORY / DEMO_CONFIG).read_text())["evaluate"]["methods"]) == sorted(methods)
    assert sorted(jobs["extract"]) == [f"resources/data/{name}" for name in ("demo", "demo_clips", "demo_images")]
    # One job per trained model writes its export and its initialisation.
    assert sorted(jobs["train"]) == [f"results/models/{name}.pth, results/models/init/{name}.pth" for name in sorted(TRAINED)]
    pairs = {f"results/{benchmark}/{method}.json" for benchmark in BENCHMARKS for method in evaluated_names(methods, benchmark)}
    assert set(pairs) == set(jobs["result"]) and len(pairs) == 3 * 7 * 3 - 7  # @dino: no demo_jhmdb
    assert len(jobs["propagate"]) == len(jobs["score"]) == len(pairs)
    for rule in ("summary", "cross_protocol", "score_chart", "report_page"):
        assert len(jobs[rule]) == 1, rule
    assert sorted(jobs["loss_curves"]) == [f"results/report/training/{name}.png" for name in ("demo_hvc", "demo_moco", "demo_stt")]
    assert len(jobs["overlay"]) == 3


@pytest.mark.slow
@pytest.mark.workflow_run
def test_demo_end_to_end_reruns_and_report(tmp_path):
    checkout = fresh_checkout(tmp_path / "clone")
    (checkout / "subset.yaml").write_text(RUN_CONFIG)
    subset = ("subset.yaml",)
    snakemake(checkout, configs=subset)
    methods = list(RUN_METHODS)
    for benchmark in BENCHMARKS:
        for method in evaluated_names(methods, benchmark):
            assert (checkout / "results" / benchmark / f"{method}.json").is_file(), (benchmark, method)
    with open(checkout / "results" / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["benchmark"], row["method"]) for row in rows} == {(b, m) for b in BENCHMARKS for m in methods}
    headlines = {"demo_davis": "J&F-Mean (%)", "demo_jhmdb": "PCK@0.1 (%)", "demo_vip": "mIoU (%)"}
    for row in rows:
        assert row["status"] == "scored" and row[headlines[row["benchmark"]]] != "", row
    # Different encoders give different predictions (equal predictions would mean one model everywhere;
    # scores may coincide, PCK on a few joints most of all).
    for benchmark in BENCHMARKS:
        predictions = [files_below(checkout / "results" / "predictions" / benchmark / method) for method in methods]
        assert all(first != second for first, second in itertools.combinations(predictions, 2)), benchmark
    with open(checkout / "results" / "cross_protocol.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert [(c["benchmark"], c["method"], c["protocol"]) for c in cells] == [
        (b, m, p) for b in BENCHMARKS for m in methods for p in PROTOCOLS]
    assert all((cell["status"] == "scored") == ((cell["benchmark"], cell["protocol"]) not in UNDEFINED) for cell in cells)
    own = {(row["benchmark"], row["method"]): row for row in rows}
    for cell in cells:
        if cell["settings"] == "own":  # the method's own protocol: its summary row
            assert cell[headlines[cell["benchmark"]]] == own[cell["benchmark"], cell["method"]][headlines[cell["benchmark"]]]

    # Validated while training (models.yaml demo_*: eval_every), at step 0 (untrained) and the last step.
    for model in ("demo_moco", "demo_stt"):
        (metrics,) = (checkout / "results" / "train" / model).glob("*/metrics.csv")
        with open(metrics, newline="") as handle:
            validated = [int(row["step"]) for row in csv.DictReader(handle) if row.get("val/J&F-Mean")]
        assert validated[0] == 0 and validated[-1] == REDUCED, (model, validated)

    assert "Nothing to be done" in snakemake(checkout, "-n", configs=subset)

    # One propagation parameter of one benchmark: that benchmark's propagation and scoring only.
    overlay = checkout / "overlay.yaml"
    overlay.write_text("propagation: {set: {demo_vip: {topk: 5}}}\n")
    listing = snakemake(checkout, "-n", configs=(*subset, str(overlay)))
    jobs = planned(listing)
    assert sorted(jobs["propagate"]) == sorted(f"results/predictions/demo_vip/{m}/all" for m in evaluated_names(methods, "demo_vip"))
    assert sorted(jobs["score"]) == sorted(f"results/scores/demo_vip/{m}.json" for m in evaluated_names(methods, "demo_vip"))
    assert "train" not in jobs and "extract" not in jobs
    (tmp_path / "propagation-change.txt").write_text(listing)

    # A stage-one hyper-parameter: stage one, the stage two it teaches, and their evaluations.
    models = checkout / "config" / "models.yaml"
    models.write_text(models.read_text().replace("queue_size: 64, image_size: 64, dim: 32", "queue_size: 64, image_size: 64, dim: 16"))
    listing = snakemake(checkout, "-n", configs=subset)
    jobs = planned(listing)
    assert sorted(jobs["train"]) == [f"results/models/{name}.pth, results/models/init/{name}.pth" for name in ("demo_moco", "demo_stt")]
    # Stage two starts from stage one: the model and its initialisation, under every protocol.
    retrained = {f"{name}{suffix}" for name in ("demo_stt", "demo_stt_init") for suffix in ("", "@crw", "@dino")}
    assert {Path(path).parent.name for path in jobs["propagate"]} == retrained
    assert len(jobs["propagate"]) == 2 * (3 + 3 + 2)  # @dino: no demo_jhmdb
    (tmp_path / "stage-one-change.txt").write_text(listing)

    # The report page in a real browser: the table, the charts and the overlays are there.
    page = checkout / "results" / "report.html"
    chromium = chromium_binary()
    dom = headless(chromium, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    images = 1 + 2 + 1  # score chart, the curves of stage one and stage two, one overlay
    assert re.search(r"<body[^>]*>", dom).group(0) == f'<body data-images-loaded="{images}/{images}">'
    assert dom.count("<table") == 2 and all(f"<td>{method}</td>" in dom for method in methods)
    assert "results/demo_davis/demo_stt@crw.json" in dom  # the cross-protocol table
    # What a newcomer needs: the data are synthetic, one unit, no empty columns, `settings` said,
    # captions that say what a figure shows, the MoCo curve explained.
    assert dom.index('class="notice">Synthetic data: demo_davis, demo_jhmdb, demo_vip') < dom.index("<table")
    assert "<th>J&amp;F-Mean (%)</th>" in dom and "Every score is in %" in dom
    assert "<th>archive</th>" not in dom and "<th>upload_to</th>" not in dom
    # Only the cross-protocol table has a note: why JHMDB has no dino cell (the summary's are all scored).
    assert dom.count("<th>note</th>") == 1 and "protocol dino defines no jhmdb task" in dom
    assert "<code>settings</code>: whose propagation settings" in dom
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", dom)
    assert captions[1].startswith("Training of demo_moco") and "the first 4 steps fill it" in captions[1]
    assert captions[-1].startswith("demo_stt on demo_davis, sequence coffee-2")
    assert not [caption for caption in captions if caption.endswith(".png")]
    screenshot = tmp_path / "report.png"
    headless(chromium, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,4000", page.as_uri())
    from PIL import Image

    shot = np.array(Image.open(screenshot).convert("RGB"))
    assert (shot == (31, 119, 180)).all(axis=-1).sum() > 500, "the score chart is not visible"
    if os.environ.get("VCORR_KEEP_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["VCORR_KEEP_SCREENSHOT"])

    # Snakemake's report of the same run: the tables, every result, the curves and the overlay.
    snakemake(checkout, "--report", "report.zip", configs=subset)
    with zipfile.ZipFile(checkout / "report.zip") as archive:
        names = [Path(name).name for name in archive.namelist() if "/data/raw/" in name]
    assert sorted(name for name in names if not name.endswith(".json")) == sorted([
        "summary.csv", "cross_protocol.csv", "scores.png", "report.html", "demo_moco.png", "demo_stt.png", "coffee-2.png"])
    assert len([name for name in names if name.endswith(".json")]) == sum(len(evaluated_names(methods, benchmark)) for benchmark in BENCHMARKS)
