"""The tiny configuration through a real Slurm scheduler, with the project's profiles/slurm.

Needs root and the Slurm packages (`.ci/run` installs them with apt-get when it runs as root on
Debian; the test skips where they are missing), then tests/slurm/with-cluster.sh starts a one-node cluster on
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

from workflow_fixtures import REPO, TINY, load_builder, make_tiny_workspace, serve

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.workflow_run]

PROGRAMS = ["slurmctld", "slurmd", "sbatch", "sacct", "sacctmgr", "munged", "slurmdbd", "mariadbd", "mariadb-install-db"]
CLUSTER_SCRIPTS = REPO / "tests" / "slurm"
RUN_LIMIT_S = 780
# A part of the tiny configuration that still exercises every kind of cluster job: extraction,
# propagation on a GPU (one job, and YouTube-VOS in two shards), scoring, export, and training
# (one GPU, through torchrun: tiny_hvc), asked for by target. Each job pays Slurm's scheduling
# and a Snakemake start inside the job, so the subset is kept to one job of each kind and shape.
SUBSET = {"methods": ["tiny_crw"], "benchmarks": ["davis17", "ytvos18"]}
TRAINED = ["results/davis17/tiny_hvc.json"]
TRAINING_ON_A_GPU = {"train": {"mem_mb": 2000, "runtime": 10, "cpus_per_task": 1, "gpu": 1, "nodes": 1}}


def require_slurm() -> None:
    if os.geteuid() != 0:
        pytest.skip("starting a Slurm cluster needs root")
    missing = [program for program in PROGRAMS if not shutil.which(program)]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing; .ci/run installs it as root on Debian)")


@pytest.fixture
def scratch():
    """A scratch folder the munge user can traverse (pytest's tmp_path is private to root)."""
    require_slurm()
    folder = Path(tempfile.mkdtemp(prefix="vcorr-slurm-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        # with-cluster.sh stops the daemons itself; this covers a test killed before its trap ran.
        subprocess.run(["bash", str(CLUSTER_SCRIPTS / "stop.sh"), str(folder)], timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(900)
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
            sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--profile", "slurm", "all", *TRAINED,
            "--default-resources", "slurm_partition=debug", "slurm_account=root",
            # The one-node test cluster answers at once: status checks every second, not the profile's
            # 20 s before the first one and Snakemake's 10 s between rounds.
            "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
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
    # tiny_crw on davis17 and on ytvos18 in two shards; the trained method on its benchmark.
    assert len(rules.get("propagate", [])) == 3 + len(TRAINED), records
    for record in rules["propagate"]:
        assert record["State"] == "COMPLETED", record
        assert "gres/gpu=1" in record["ReqTRES"] and "gres/gpu=1" in record["AllocTRES"], record
    # One training job per model, each asking for (and given) its GPU; torchrun ran one process.
    trained = sorted(record["Comment"].split("_wildcards_")[1] for record in rules.get("train", []))
    assert trained == ["tiny_hvc"], records
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
