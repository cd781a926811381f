"""The tiny configuration through a real Slurm scheduler, with the project's profiles/slurm.

Needs root and Debian's apt: the Slurm packages are installed when missing (CI: `.ci/run` as root
on a fresh Debian machine), then tests/slurm/with-cluster.sh starts a one-node cluster on
127.0.0.1 with a fake GPU and accounting (slurmdbd + MariaDB), runs `snakemake --profile slurm`
exactly as a user types it after the README's one-time step (the profile linked into the user's
Snakemake config folder), and stops every daemon whatever happens (its trap, the fixture's
finalizer, and `timeout -k` around it all). Only site values are overridden: partition, account.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from test_workflow import REPO, SNAKEFILE, TINY, load_builder, make_tiny_workspace, serve

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
PROGRAMS = ["slurmctld", "slurmd", "sbatch", "sacct", "sacctmgr", "munged", "slurmdbd", "mariadbd", "mariadb-install-db"]
CLUSTER_SCRIPTS = REPO / "tests" / "slurm"
RUN_LIMIT_S = 780
# A part of the tiny configuration that still exercises every kind of cluster job: extraction,
# propagation on a GPU (one job, and YouTube-VOS in two shards), scoring, export, and training
# (one GPU each, through torchrun: tiny_hvc, and tiny_moco -> tiny_stt), asked for by target.
SUBSET = {"methods": ["tiny_crw"], "benchmarks": ["davis17", "jhmdb", "ytvos18"]}
TRAINED = ["results/davis17/tiny_hvc.json", "results/davis17/tiny_stt.json"]
TRAINING_ON_A_GPU = {"train": {"mem_mb": 2000, "runtime": 10, "cpus_per_task": 1, "gpu": 1, "nodes": 1}}


def ensure_slurm_installed() -> None:
    if os.geteuid() != 0:
        pytest.skip("starting a Slurm cluster needs root")
    if all(shutil.which(program) for program in PROGRAMS):
        return
    if not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["timeout", "-k", "10", "600", "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(install, env=environment, capture_output=True, text=True)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["timeout", "-k", "10", "300", "apt-get", "update", "-q"], env=environment, capture_output=True)
        done = subprocess.run(install, env=environment, capture_output=True, text=True)
    assert done.returncode == 0, f"apt-get install {' '.join(PACKAGES)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    missing = [program for program in PROGRAMS if not shutil.which(program)]
    assert not missing, f"installed {PACKAGES} but {missing} are still missing"


@pytest.fixture
def scratch():
    """A scratch folder the munge user can traverse (pytest's tmp_path is private to root)."""
    ensure_slurm_installed()
    folder = Path(tempfile.mkdtemp(prefix="vcorr-slurm-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        # with-cluster.sh stops the daemons itself; this covers a test killed before its trap ran.
        subprocess.run(["bash", str(CLUSTER_SCRIPTS / "stop.sh"), str(folder)], timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(1500)  # the Slurm packages' install, then the run
def test_tiny_configuration_runs_through_sbatch_with_gpu_requests(scratch, tmp_path):
    mirror = tmp_path / "mirror"
    load_builder().build(mirror)
    server, mirror_url = serve(mirror)
    try:
        workspace = make_tiny_workspace(tmp_path / "work", mirror, mirror_url)
        overlay = tmp_path / "overlay.yaml"
        resources = {**yaml.safe_load((TINY / "config/config.yaml").read_text())["resources"], **TRAINING_ON_A_GPU}
        overlay.write_text(yaml.safe_dump({"registries": str(workspace.registries), "evaluate": SUBSET,
                                           "resources": resources}))
        # The README's one-time step, with the user's config folder in the scratch area.
        config_home = scratch / "xdg"
        (config_home / "snakemake").mkdir(parents=True)
        (config_home / "snakemake" / "slurm").symlink_to(REPO / "profiles" / "slurm")
        snakemake = [
            sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--profile", "slurm", "all", *TRAINED,
            "--default-resources", "slurm_partition=debug", "slurm_account=root",
            "--configfile", str(TINY / "config/config.yaml"), str(overlay),
        ]
        environment = {**os.environ, "XDG_CONFIG_HOME": str(config_home), "VCORR_MIRROR": mirror_url,
                       "OMP_NUM_THREADS": "1"}
        command = ["timeout", "-k", "20", str(RUN_LIMIT_S), "bash", str(CLUSTER_SCRIPTS / "with-cluster.sh"),
                   str(scratch), *snakemake]
        done = subprocess.run(command, cwd=workspace.root, env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=RUN_LIMIT_S + 60)
    finally:
        server.shutdown()
    logs = "\n".join(f"--- {path}\n{path.read_text()[-2000:]}" for path in sorted((scratch / "log").glob("*.log")))
    assert done.returncode == 0, done.stdout[-8000:] + logs

    with open(scratch / "sacct.tsv", newline="") as handle:
        records = list(csv.DictReader(handle, delimiter="|"))
    rules = {}
    for record in records:
        rule = record["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        rules.setdefault(rule, []).append(record)
    # tiny_crw on davis17, jhmdb, and ytvos18 in two shards; each trained method on its benchmark.
    assert len(rules.get("propagate", [])) == 4 + len(TRAINED), records
    for record in rules["propagate"]:
        assert record["State"] == "COMPLETED", record
        assert "gres/gpu=1" in record["ReqTRES"] and "gres/gpu=1" in record["AllocTRES"], record
    # One training job per model, each asking for (and given) its GPU; torchrun ran one process.
    trained = sorted(record["Comment"].split("_wildcards_")[1] for record in rules.get("train", []))
    assert trained == ["tiny_hvc", "tiny_moco", "tiny_stt"], records
    for record in rules["train"]:
        assert record["State"] == "COMPLETED", record
        assert "gres/gpu=1" in record["ReqTRES"] and "gres/gpu=1" in record["AllocTRES"], record
    for model in trained:
        log = (workspace.root / "logs/train" / f"{model}.log").read_text()
        assert log.count(f"exported results/models/{model}.pth") == 1, log[-2000:]
    for rule in ("extract", "score", "export"):
        assert rules.get(rule), f"no {rule} job went through sbatch: {records}"
        assert all("gres/gpu" not in record["AllocTRES"] for record in rules[rule]), rules[rule]
    # Downloads, indexing, weights and reports stayed on the submitting machine.
    assert not {"fetch_davis17", "index", "weights_crw", "result", "summary"} & set(rules)

    root = workspace.root
    for benchmark in SUBSET["benchmarks"]:
        result = json.loads((root / "results" / benchmark / "tiny_crw.json").read_text())
        assert result["method"] == "tiny_crw" and result["benchmark"] == benchmark
    assert (root / "results/ytvos18/tiny_crw.zip").is_file()
    assert (root / "results/summary.csv").read_text().count("\n") == 1 + len(SUBSET["benchmarks"])
    for target in TRAINED:
        assert json.loads((root / target).read_text())["status"] == "scored"
