"""Training in the DAG: rule `train` (config/models.yaml), its launcher, its rerun trigger.

Fast tests dry-run the project's registries: a trained method's result plans download ->
extract -> index -> train (-> the stage it starts from) -> propagate -> score, the launcher
follows the job's resources (torchrun on one node, srun + c10d rendezvous on several), and a
manual-only training set fails its job, not the dry run. The slow ones train the tiny
configuration's models for real (tiny_hvc; tiny_moco -> tiny_stt) and evaluate them, then check
that changing one hyper-parameter reruns exactly that training and what uses it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from workflow_fixtures import REPO, TRAINED, make_tiny_workspace, registry, sha256, snakemake

CONFIG = str(REPO / "config/config.yaml")
SLURM_PROFILE = str(REPO / "profiles/slurm")


def dry_run_jobs(output: str) -> list[dict]:
    """Every job of a `snakemake -n` listing: rule, wildcards, input and output paths, command."""
    jobs, current = [], None
    for line in output.splitlines():
        stripped = line.strip()
        header = re.fullmatch(r"(?:local)?rule (\S+):", stripped)
        if header:
            current = {"rule": header[1], "input": [], "output": [], "wildcards": {}, "command": ""}
            jobs.append(current)
        elif current is not None and ":" in stripped:
            key, _, value = stripped.partition(":")
            if key in ("input", "output"):
                current[key] = [item.strip() for item in value.split(",") if item.strip()]
            elif key == "wildcards":
                current["wildcards"] = dict(item.strip().split("=", 1) for item in value.split(","))
            elif key in ("resources", "reason"):
                current[key] = value.strip()
        if current is not None and stripped.startswith("Shell command:"):
            current["command"] = stripped.removeprefix("Shell command:").strip()
    return jobs


def job_name(job: dict) -> str:
    return ":".join([job["rule"], *job["wildcards"].values()])


def producers(jobs: list[dict]) -> dict[str, set[str]]:
    """job name -> the names of the jobs whose outputs it reads."""
    made_by = {path: job_name(job) for job in jobs for path in job["output"]}
    return {job_name(job): {made_by[path] for path in job["input"] if path in made_by} for job in jobs}


def assert_chain(jobs: list[dict], *chain: str) -> None:
    """Each job of `chain` (rule[:wildcard values]) reads an output of the one before it."""
    graph = producers(jobs)
    names = list(graph)

    def find(pattern):
        found = [name for name in names if name == pattern or name.startswith(pattern + ":")]
        assert len(found) == 1, f"{pattern}: {found} among {names}"
        return found[0]

    for before, after in zip(chain, chain[1:]):
        assert find(before) in graph[find(after)], f"{after} does not read {before}'s output: {graph[find(after)]}"


def dry_run(*targets: str, cwd: Path, extra: tuple[str, ...] = ()) -> list[dict]:
    done = snakemake("-n", *targets, *extra, "--configfile", CONFIG, cwd=cwd)
    assert done.returncode == 0, done.stdout[-4000:]
    return dry_run_jobs(done.stdout)


# --- the project's registries: dry runs ------------------------------------------------------


def test_hvc_result_plans_coco_to_training_to_the_published_fusion_and_score(fresh_directory):
    jobs = dry_run("results/davis17/hvc.json", cwd=fresh_directory)
    assert Counter(job["rule"] for job in jobs) == Counter({
        "fetch_coco": 1, "fetch_davis17": 1, "fetch_moco_v1_200ep": 1, "extract": 2, "index": 2,
        "train": 1, "weights_moco_v1_200ep": 1, "propagate": 1, "score": 1, "result": 1,
    })
    assert_chain(jobs, "fetch_coco", "extract:coco", "index:coco", "train:hvc", "propagate", "score", "result")
    assert_chain(jobs, "fetch_moco_v1_200ep", "weights_moco_v1_200ep", "propagate")
    (train,) = [job for job in jobs if job["rule"] == "train"]
    # The declared outputs are the export and the initialisation; the work dir (checkpoints) is not one.
    assert train["output"] == ["results/models/hvc.pth", "results/models/init/hvc.pth"]
    assert re.search(r"--workdir results/train/hvc/[0-9a-f]{12} --out results/models/hvc.pth "
                     r"--init-out results/models/init/hvc.pth", train["command"])
    # Validation while training (models.yaml set): on DAVIS-2017 train, with the method that evaluates
    # the model (found from its export), whose downloaded MoCo v1 partner is an input too.
    assert_chain(jobs, "fetch_davis17", "extract:davis17", "train:hvc")
    assert_chain(jobs, "weights_moco_v1_200ep", "train:hvc")
    for argument in ('eval_benchmark="davis17_train"', 'eval_method="hvc"', 'eval_data_root="resources/data/davis17/DAVIS"'):
        assert f"--set '{argument}'" in train["command"]
    assert f"--method hvc --config {REPO}/config/train/hvc.yaml --data resources/index/coco.csv" in train["command"]
    # config resources.train: 4 GPUs -> one torchrun, four processes; never a Slurm task per GPU.
    assert train["command"].startswith("python3 -m torch.distributed.run --standalone --nproc-per-node=4 --no-python vcorr train")
    assert "tasks_per_gpu=0" in train["resources"] and "gpu=4" in train["resources"]


@pytest.mark.parametrize("evaluated_on", ["davis17", "jhmdb", "vip"])
def test_stt_result_plans_stage_one_on_imagenet_then_stage_two_on_youtube_vos(fresh_directory, evaluated_on):
    jobs = dry_run(f"results/{evaluated_on}/stt.json", cwd=fresh_directory)
    assert Counter(job["rule"] for job in jobs)["train"] == 3
    for stage_one in ("moco_v2_r18", "moco_v2"):  # the R18 student's start, the R50 teacher
        assert_chain(jobs, "fetch_imagenet", "extract:imagenet", "index:imagenet", f"train:{stage_one}", "train:stt",
                     f"propagate:{evaluated_on}", f"score:{evaluated_on}", f"result:{evaluated_on}")
    assert_chain(jobs, "fetch_ytvos18_train", "extract:ytvos18_train", "index:ytvos18_train", "train:stt")
    commands = {job["wildcards"]["model"]: job["command"] for job in jobs if job["rule"] == "train"}
    assert "--set 'student_weights=\"results/models/moco_v2_r18.pth\"'" in commands["stt"]
    assert "--set 'teacher_weights=\"results/models/moco_v2.pth\"'" in commands["stt"]
    assert "--set 'arch=\"resnet18\"'" in commands["moco_v2_r18"]
    assert "--data resources/index/ytvos18_train.csv" in commands["stt"]


def test_stt_from_the_official_moco_checkpoint_downloads_it_and_trains_stage_two_only(fresh_directory):
    jobs = dry_run("results/davis17/stt_moco_official.json", "results/davis17/stt_r50.json", cwd=fresh_directory)
    assert_chain(jobs, "fetch_moco_v2_800ep", "weights_moco_v2_800ep", "train:stt_moco_official", "propagate:davis17:stt_moco_official")
    assert_chain(jobs, "train:moco_v2", "train:stt_r50", "propagate:davis17:stt_r50")
    trained = sorted(job["wildcards"]["model"] for job in jobs if job["rule"] == "train")
    assert trained == ["moco_v2", "stt_moco_official", "stt_r50"]


def test_every_trained_method_reads_a_model_of_the_registry(fresh_directory):
    models = registry("models")
    methods = registry("methods")
    for method in ("hvc", "hvc_ytvos", "hvc_voc", "hvc_msra10k", "stt", "stt_r50", "stt_moco_official"):
        paths = [encoder["weights"].get("path") for encoder in methods[method]["encoders"]]
        assert f"results/models/{method}.pth" in paths and method in models
    jobs = dry_run(*(f"results/models/{name}.pth" for name in models), cwd=fresh_directory)
    assert sorted(job["wildcards"]["model"] for job in jobs if job["rule"] == "train") == sorted(models)


def test_the_launcher_follows_the_jobs_gpu_and_node_resources(fresh_directory, tmp_path):
    two = dry_run("results/models/hvc.pth", cwd=fresh_directory, extra=("--set-resources", "train:gpu=2"))
    (train,) = [job for job in two if job["rule"] == "train"]
    assert "--standalone --nproc-per-node=2 --no-python vcorr train" in train["command"]

    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(yaml.safe_dump({"resources": {"train": {"mem_mb": 64000, "runtime": 2880, "cpus_per_task": 16,
                                                              "gpu": 4, "nodes": 2}}}))
    done = snakemake("-n", "--profile", SLURM_PROFILE, "results/models/hvc.pth", "--configfile", CONFIG, str(nodes),
                     cwd=fresh_directory)
    assert done.returncode == 0, done.stdout[-4000:]
    (train,) = [job for job in dry_run_jobs(done.stdout) if job["rule"] == "train"]
    # One torchrun per node through srun, meeting at the first node of the allocation.
    assert train["command"].startswith(
        'srun --ntasks-per-node=1 python3 -m torch.distributed.run --nnodes="$SLURM_NNODES" --nproc-per-node=4 '
        '--rdzv-backend=c10d --rdzv-id="$SLURM_JOB_ID" '
        '--rdzv-endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):29500" --no-python vcorr train')
    # What the Slurm plugin needs: --nodes=2, one task per node (mpi + tasks), 4 GPUs per node, no task per GPU.
    for resource in ("nodes=2", "mpi=srun", "tasks=2", "gres=gpu:4", "tasks_per_gpu=0", "slurm_extra=--signal=USR1@120"):
        assert resource in train["resources"].split(", "), train["resources"]
    assert not re.search(r"\bgpu=", train["resources"])  # a total --gpus would spread over the nodes


def dry_run_with_models(edit, target: str, cwd: Path, tmp_path: Path):
    """`snakemake -n target` with a copy of the registries whose models.yaml `edit` changed."""
    folder = tmp_path / "registries"
    shutil.copytree(REPO / "config", folder)
    models = registry("models", folder)
    edit(models)
    (folder / "models.yaml").write_text(yaml.safe_dump(models))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"registries": str(folder)}))
    return snakemake("-n", target, "--configfile", CONFIG, str(overlay), cwd=cwd)


def test_a_model_naming_an_unknown_stage_fails_the_dry_run(fresh_directory, tmp_path):
    def edit(models):
        models["stt"]["weights"]["teacher_weights"] = {"model": "moco_v3"}

    done = dry_run_with_models(edit, "results/davis17/stt.json", fresh_directory, tmp_path)
    assert done.returncode != 0
    assert "models.yaml: stt.weights.teacher_weights.model: 'moco_v3'" in done.stdout


def test_validating_on_an_evaluation_benchmark_fails_the_dry_run(fresh_directory, tmp_path):
    def edit(models):
        models["hvc"]["set"] = {**models["hvc"]["set"], "eval_benchmark": "davis17"}

    done = dry_run_with_models(edit, "results/models/hvc.pth", fresh_directory, tmp_path)
    assert done.returncode != 0
    assert "models.yaml: hvc: eval_benchmark 'davis17' is not a benchmark of role validation" in done.stdout


# --- the tiny configuration -------------------------------------------------------------------


@pytest.mark.slow
def test_manual_training_data_fails_its_job_with_where_to_put_it_not_the_dry_run(tiny_mirror, tmp_path):
    mirror, url = tiny_mirror
    workspace = make_tiny_workspace(tmp_path, mirror, url)
    shutil.rmtree(workspace.root / "resources/downloads/imagenet")  # not placed by hand
    planned = workspace.run("-n", "results/davis17/tiny_stt.json")
    assert planned.returncode == 0, planned.stdout[-4000:]
    assert "fetch_imagenet" in planned.stdout
    done = workspace.run("--cores", "1", "resources/index/imagenet.csv")
    assert done.returncode != 0
    message = (workspace.root / "logs/fetch/imagenet.log").read_text()
    assert "cannot be downloaded by vcorr" in message
    assert "put ILSVRC2012_img_train.tar in resources/downloads/imagenet/" in message
    assert not (workspace.root / "resources/index/imagenet.csv").exists()


@pytest.mark.slow
def test_tiny_models_train_and_are_evaluated_end_to_end(tiny_run):
    workspace, done = tiny_run
    assert done.returncode == 0, done.stdout[-6000:]
    root = workspace.root
    for target in TRAINED:
        result = json.loads((root / target).read_text())
        assert result["status"] == "scored" and result["headline"], result
        model = result["method"]
        # The checkpoint the evaluation read is the exported model.
        assert [c["sha256"] for c in result["provenance"]["checkpoints"]] == [sha256(root / f"results/models/{model}.pth")]
    for model, steps in (("tiny_hvc", 2), ("tiny_moco", 2), ("tiny_stt", 2)):
        (workdir,) = (root / "results/train" / model).iterdir()
        assert re.fullmatch(r"[0-9a-f]{12}", workdir.name)
        assert len((workdir / "metrics.csv").read_text().splitlines()) == 1 + steps  # log_every 1
        assert f"exported results/models/{model}.pth" in (root / f"logs/train/{model}.log").read_text()
    # Stage two started from stage one's export (the resolved config beside the checkpoint).
    (stt_workdir,) = (root / "results/train/tiny_stt").iterdir()
    resolved = yaml.safe_load((stt_workdir / "config.yaml").read_text())
    assert resolved["student_weights"] == resolved["teacher_weights"] == "results/models/tiny_moco.pth"


@pytest.mark.slow
def test_changing_a_training_hyper_parameter_reruns_that_training_and_what_uses_it(tiny_run):
    workspace, done = tiny_run
    assert done.returncode == 0, done.stdout[-6000:]
    unchanged = workspace.run("-n", *TRAINED)
    assert unchanged.returncode == 0 and "Nothing to be done" in unchanged.stdout, unchanged.stdout[-3000:]

    models_file = workspace.registries / "models.yaml"
    original = models_file.read_text()
    models = yaml.safe_load(original)
    models["tiny_moco"]["set"]["temperature"] = 0.1
    models_file.write_text(yaml.safe_dump(models))
    try:
        changed = workspace.run("-n", *TRAINED)
    finally:
        models_file.write_text(original)
    assert changed.returncode == 0, changed.stdout[-3000:]
    jobs = dry_run_jobs(changed.stdout)
    assert sorted(job_name(job) for job in jobs) == sorted([
        "train:tiny_moco", "train:tiny_stt",
        *(f"{rule}:{benchmark}:tiny_stt" + (":all" if rule == "propagate" else "")
          for benchmark in ("davis17", "jhmdb", "vip") for rule in ("propagate", "score", "result")),
    ])
    reasons = {job_name(job): job["reason"].lower() for job in jobs}
    assert "params have changed" in reasons["train:tiny_moco"]  # the trigger: its resolved settings
    assert "tiny_moco.pth" in reasons["train:tiny_stt"]  # it reads stage one's export
    # A new work dir (the settings digest): the old checkpoints stay, nothing resumes from them.
    new_workdirs = {job["wildcards"]["model"]: re.search(r"--workdir (\S+)", job["command"])[1]
                    for job in jobs if job["rule"] == "train"}
    for model, workdir in new_workdirs.items():
        assert not (workspace.root / workdir).exists()
        assert any((workspace.root / "results/train" / model).iterdir())
