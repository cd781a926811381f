"""vcorr deployed as a Snakemake module (README: Deploying the workflow as a module): a project folder
that holds only the Snakefile snakedeploy writes (`module vcorr: snakefile: ...; config: config`,
`use rule * from vcorr`), its own config/ and profiles/, run from that folder.

The tiny configuration runs there to the same predictions, archives and summary, byte for byte, and
the same scores (the scorer's JSON but its wall time), as the session's run of it from the checkout
(conftest.py `tiny_run`); the project's registries
override vcorr's (a method added to its methods.yaml) and take what they lack from vcorr's
(no benchmarks.yaml); the code digests work from the deployed source (a scorer edit reruns its
scorings there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import yaml

from test_workflow import EditedCode, tiny_pairs
from workflow_fixtures import RUN_TIMEOUT_S, files_below, planned_jobs, registry

# What snakedeploy deploy-workflow writes as workflow/Snakefile of the project (its template),
# with the module's source given by path instead of github("<owner>/vcorr", path=..., tag=...).
MODULE_SNAKEFILE = """\
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# declare vcorr as a module
module vcorr:
    snakefile:
        "{snakefile}"
    config:
        config


# use all rules from vcorr
use rule * from vcorr
"""
# A method only the project knows: tiny_random's settings under another name, on DAVIS.
OWN_METHOD = "my_random"
OWN_TARGET = f"results/davis17/{OWN_METHOD}.json"


def deployed_project(root: Path, workspace) -> Path:
    """The project folder: the module Snakefile, the tiny configuration as its config/ (with the
    project's own method, without benchmarks.yaml), vcorr's profiles/, the archives placed by hand."""
    (root / "workflow").mkdir(parents=True)
    (root / "workflow" / "Snakefile").write_text(
        MODULE_SNAKEFILE.format(snakefile=workspace.checkout / "workflow" / "Snakefile"))
    shutil.copytree(workspace.registries, root / "config")
    (root / "config" / "benchmarks.yaml").unlink()
    settings = yaml.safe_load((workspace.checkout / ".test/config/config.yaml").read_text())
    settings["registries"] = None  # the project's config/, vcorr's for what it lacks
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    methods = registry("methods", root / "config")
    methods[OWN_METHOD] = {**methods["tiny_random"], "benchmarks": {"davis17": methods["tiny_random"]["benchmarks"]["davis17"]}}
    (root / "config" / "methods.yaml").write_text(yaml.safe_dump(methods, sort_keys=False))
    shutil.copytree(workspace.checkout / "profiles", root / "profiles")
    placed = workspace.root / "resources" / "downloads"
    for dataset, entry in registry("datasets", workspace.registries).items():
        if entry.get("manual"):
            shutil.copytree(placed / dataset, root / "resources" / "downloads" / dataset)
    return root


def project_snakemake(project: Path, *args: str, mirror_url: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake ARGS` run in the project as its user runs it: no -s, no profile option (Snakemake
    finds workflow/Snakefile and profiles/default there)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "VCORR_MIRROR": mirror_url, **(env or {})}
    environment.pop("VCORR_CONFIG_DIR", None)
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=project, env=environment,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT_S)


def scores_of(path: Path) -> dict:
    """A scorer's JSON as compared between runs: without its wall time, and with the content of the
    split list it read (each run reads it from where it keeps it) instead of the list's path."""
    scores = json.loads(path.read_text())
    del scores["seconds"]
    if "split" in scores:
        scores["split"] = Path(scores["split"]).read_text()
    return scores


def archive_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.fixture(scope="module")
def deployed_run(tiny_run, tmp_path_factory):
    workspace, first = tiny_run
    assert first.returncode == 0, first.stdout[-3000:]
    project = deployed_project(tmp_path_factory.mktemp("project"), workspace)
    done = project_snakemake(project, "--cores", "2", "all", OWN_TARGET, mirror_url=workspace.mirror_url)
    return workspace, project, done


@pytest.mark.slow
def test_a_deployed_module_gives_the_repository_runs_predictions_and_scores(deployed_run):
    workspace, project, done = deployed_run
    assert done.returncode == 0, done.stdout[-6000:]
    assert "workflow specific profile profiles/default" in done.stdout  # the project's copy
    repository = workspace.root
    for benchmark, method in tiny_pairs(workspace):
        folders = sorted((repository / "results/predictions" / benchmark / method).iterdir())
        assert folders, (benchmark, method)
        for folder in folders:
            ours = files_below(project / folder.relative_to(repository))
            assert ours and ours == files_below(folder), folder
        if registry("benchmarks")[benchmark]["scorer"] == "server":
            archive = Path("results", benchmark, f"{method}.zip")
            assert archive_members(project / archive) == archive_members(repository / archive), archive
        else:
            scores = Path("results/scores", benchmark, f"{method}.json")
            assert scores_of(project / scores) == scores_of(repository / scores), scores
    assert (project / "results/summary.csv").read_bytes() == (repository / "results/summary.csv").read_bytes()
    # The project's own method (its methods.yaml): tiny_random's settings, tiny_random's predictions.
    own = files_below(project / "results/predictions/davis17" / OWN_METHOD / "all")
    assert own and own == files_below(repository / "results/predictions/davis17/tiny_random/all")
    # Results, resources and logs in the project; nothing written into the module's source.
    for folder in ("results", "resources", "logs"):
        assert (project / folder).is_dir()
        assert not (workspace.checkout / folder).exists(), folder


@pytest.mark.slow
def test_a_deployed_modules_code_digests_rerun_what_a_scorer_change_makes_stale(deployed_run):
    workspace, project, done = deployed_run
    assert done.returncode == 0, done.stdout[-3000:]
    nothing = project_snakemake(project, "-n", "all", OWN_TARGET, mirror_url=workspace.mirror_url)
    assert "Nothing to be done" in nothing.stdout, nothing.stdout[-3000:]
    with EditedCode(workspace, "metrics/davis.py", "boundary_tolerance.__doc__ = None"):
        planned = project_snakemake(project, "-n", "all", OWN_TARGET, mirror_url=workspace.mirror_url)
    assert planned.returncode == 0, planned.stdout[-3000:]
    davis = [method for benchmark, method in tiny_pairs(workspace) if benchmark == "davis17"] + [OWN_METHOD]
    expected = Counter({("summary", None, None, None): 1, ("all", None, None, None): 1})
    for method in davis:
        expected.update({("score", "davis17", method, None): 1, ("result", "davis17", method, None): 1})
    assert planned_jobs(planned.stdout) == expected


@pytest.mark.slow
def test_a_module_from_a_git_source_plans_what_the_module_by_path_ran(deployed_run):
    """The module's source as github(...) gives it: each file fetched from a git repository into
    Snakemake's source cache, the vcorr package the installed one (here the checkout's, as
    PYTHONPATH). The same registries, settings and code digests: nothing to do."""
    workspace, project, done = deployed_run
    assert done.returncode == 0, done.stdout[-3000:]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace.checkout, capture_output=True, text=True,
                            check=True).stdout.strip()
    from_git = MODULE_SNAKEFILE.replace(
        '"{snakefile}"', f'gitfile(repo_path="{workspace.checkout}", path="workflow/Snakefile", commit="{commit}")')
    (project / "workflow" / "Snakefile.git").write_text(from_git)
    planned = project_snakemake(project, "-s", "workflow/Snakefile.git", "-n", "all", OWN_TARGET,
                                mirror_url=workspace.mirror_url, env={"PYTHONPATH": str(workspace.checkout)})
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert "Nothing to be done" in planned.stdout and not planned_jobs(planned.stdout), planned.stdout[-3000:]
