"""benchmarks/gpu_check.py cannot rot: its CPU mode runs every check's code in the suite, without
the packages a GPU machine lacks (PyAV, ISA-L, Snakemake, scikit-image, scikit-video), and its
machinery (one check's failure, SKIP, --only, the time budget, GradScaler's skipped steps) does
what it says."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from train_fixtures import REPO_ROOT, environment

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
# Packages of vcorr's install that the GPU machines do not have.
ABSENT = ("av", "deflate", "snakemake", "skimage", "skvideo")
# What the quick CPU run must give: comparisons pass, what needs CUDA says so, throughput informs.
EXPECTED = {
    "train.moco.fp32": "PASS", "train.moco.fp16": "SKIP", "train.moco.bf16": "SKIP",
    "ddp.collectives": "PASS", "ddp.moco": "PASS", "resume.moco": "PASS", "resume.moco.fp16": "SKIP",
    "propagation.crw": "PASS", "propagation.stt": "PASS", "ties.topk": "SKIP", "ties.crw": "PASS", "ties.stt": "PASS",
    "features.fp32": "PASS", "features.fp16": "SKIP", "throughput.train.moco_v2": "INFO",
    "throughput.propagation.hvc_release_coco.fp16": "SKIP", "throughput.propagation.hvc_release_coco": "INFO",
    "throughput.propagation.stt_release_r18_s8": "INFO",
}


@pytest.fixture(scope="module")
def gpu_check():
    specification = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(specification)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    try:
        specification.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["gpu_check"]


@pytest.mark.slow
def test_the_cpu_mode_runs_every_check_without_the_packages_gpu_machines_lack(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ABSENT:
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} is not installed on the GPU machines')\n")
    out = tmp_path / "summary.json"
    env = {**environment(), "PYTHONPATH": f"{blocked}:{REPO_ROOT}"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("command: ") and "--quick" in lines[0]
    assert lines[1].startswith("machine: ") and f"torch {torch.__version__}" in lines[1] and "device cpu" in lines[1]
    summary = json.loads(out.read_text())
    results = {result["name"]: result for result in summary["results"]}
    assert {name: result["status"] for name, result in results.items()} == EXPECTED
    assert summary["machine"]["torch"] == torch.__version__
    for name in EXPECTED:  # every check's line is printed
        assert any(line.split()[1:2] == [name] for line in lines), name
    # On the CPU the device is the CPU: comparisons are exact.
    assert results["train.moco.fp32"]["measured"]["gradient_rel"] == 0
    assert results["ddp.moco"]["measured"]["difference"] == 0 and results["ddp.moco"]["measured"]["all_reduced_buckets"] > 0
    assert results["resume.moco"]["measured"]["difference"] == 0
    throughput = results["throughput.train.moco_v2"]["measured"]
    assert throughput["precisions"]["fp32"]["per_s"] > 0 and throughput["loader_per_s"] > 0
    # The published schedule's size comes from the registries: 200 epochs of ImageNet's whole batches.
    assert throughput["epochs"] == 200 and throughput["per_epoch"] == 1281167 // 256 * 256
    assert throughput["projected_s"]["fp32"] == pytest.approx(200 * throughput["per_epoch"] / throughput["precisions"]["fp32"]["per_s"])
    evaluation = results["throughput.propagation.stt_release_r18_s8"]["measured"]
    assert evaluation["davis17_val_s"] == pytest.approx(1999 / evaluation["frames_per_s"])


def test_one_check_failing_or_erring_fails_the_run_and_not_the_other_checks(gpu_check, tmp_path, capsys):
    report = gpu_check.Report(None, tmp_path / "summary.json", {"command": "test"})

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access")

    report.run("a.broken", broken)
    report.run("a.passes", lambda: gpu_check.verdict(True, "fine"))
    assert report.exit_code() == 1
    report = gpu_check.Report(None, None, {})
    report.run("b.fails", lambda: gpu_check.verdict(False, "off by 1"))
    assert report.exit_code() == 1
    report = gpu_check.Report(None, tmp_path / "other.json", {})

    def needs_cuda():
        raise gpu_check.Check("SKIP", "skipped: needs CUDA")

    report.run("c.skipped", needs_cuda)
    report.run("c.informs", lambda: gpu_check.Result("", "INFO", "12 images/s"))
    assert report.exit_code() == 0
    printed = capsys.readouterr().out
    assert "ERROR a.broken" in printed and "illegal memory access" in printed and "PASS  a.passes" in printed
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert [(result["name"], result["status"]) for result in saved["results"]] == [("a.broken", "ERROR"), ("a.passes", "PASS")]


def test_only_selects_by_name_or_prefix_and_the_budget_skips_what_is_left(gpu_check):
    report = gpu_check.Report(["train.hvc", "ties"], None, {})
    assert [name for name in ("train.hvc.fp32", "train.hvc", "train.hvcx.fp32", "train.moco.fp32", "ties.topk", "tie")
            if report.wanted(name)] == ["train.hvc.fp32", "train.hvc", "ties.topk"]
    assert report.run("train.moco.fp32", lambda: gpu_check.verdict(False, "not run")) is None
    report = gpu_check.Report(None, None, {}, budget=0)
    result = report.run("throughput.train.hvc", lambda: gpu_check.verdict(False, "not run"))
    assert result.status == "SKIP" and "budget" in result.summary


def test_a_step_gradscaler_skips_is_redone_at_the_scale_it_backed_off_to(gpu_check):
    tried = []

    def attempt(scale):
        tried.append(scale)
        start = scale or 2.0**16
        finite = start <= 2.0**13  # the scaled gradients overflow above 8192
        gradient = torch.ones(3) if finite else torch.tensor([1.0, float("inf"), 0.0])
        return gpu_check.StepResult([1.0], {}, {"weight": gradient}), start if finite else start / 2

    result = gpu_check.until_finite(attempt)
    assert tried == [None, 2.0**15, 2.0**14, 2.0**13]
    assert result.note == "; GradScaler skipped step 1 at scale 65536, 32768, 16384, compared at 8192"
    with pytest.raises(gpu_check.Check, match="non-finite gradients"):  # no scaler: nothing to back off
        gpu_check.until_finite(lambda scale: (gpu_check.StepResult([1.0], {}, {"w": torch.tensor([float("nan")])}), None))
