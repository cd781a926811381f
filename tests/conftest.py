"""Shared fixtures: the official tools' answers in ../shared/testdata (skipped when absent), and
the tiny workflow configuration run once per session in a copy of the checkout.

The suite runs on pytest-xdist workers (pyproject: `-n auto --dist loadgroup
--no-loadscope-reorder`, the groups in this order): one worker per
core, at most `MAX_WORKERS`, each with its share of the cores as torch's threads. A test file is
one unit of work (its module fixtures are made once), except that every test of the session's tiny
run goes to one worker (the run is made once), and the units holding end-to-end runs are handed
out first, so that no long run starts last. `-n 0` runs the suite in this process, in the same
order.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workflow_fixtures import REPORTED, TRAINED, fresh_checkout, load_builder, make_tiny_workspace, serve

MAX_WORKERS = 4


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(_cores(), MAX_WORKERS))


if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # Before torch is imported: workers that each spin up every core's thread slow each other down.
    _threads = str(max(1, _cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, _threads)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    """One xdist group per test file, one for the tiny run's tests; the tiny run's group first,
    then the files with a whole workflow run, then those with slow tests, then the rest, each in
    collection order."""
    groups = {item: "tiny_run" if "tiny_run" in item.fixturenames else item.path.name for item in items}

    def marked(marker: str) -> set[str]:
        return {groups[item] for item in items if item.get_closest_marker(marker)}

    workflow_runs, slow = marked("workflow_run"), marked("slow")
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    items.sort(key=lambda item: (groups[item] != "tiny_run", groups[item] not in workflow_runs,
                                 groups[item] not in slow))


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TESTDATA = REPO_ROOT.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    """`../shared/testdata` (inputs with the official tools' answers); skip when it is absent."""
    if not SHARED_TESTDATA.is_dir():
        pytest.skip(f"official test data not found at {SHARED_TESTDATA}")
    return SHARED_TESTDATA


@pytest.fixture(scope="session")
def fresh_directory(tmp_path_factory) -> Path:
    """An empty working directory for dry runs: what a fresh clone has under resources/ and results/."""
    return tmp_path_factory.mktemp("fresh")


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory):
    """The tiny configuration's downloads, served from 127.0.0.1: (folder, base URL)."""
    mirror = tmp_path_factory.mktemp("mirror")
    load_builder().build(mirror)
    server, url = serve(mirror)
    yield mirror, url
    server.shutdown()


@pytest.fixture(scope="session")
def tiny_checkout(tmp_path_factory) -> Path:
    """A copy of the checkout for the tiny run: tests may edit its code, and put it back."""
    return fresh_checkout(tmp_path_factory.mktemp("checkout") / "vcorr")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_mirror, tiny_checkout):
    """The tiny configuration run once from scratch: `all`, the trained models' results, the
    cross-protocol table, the field table of published.yaml (the same cells, beside made-up
    published numbers) and the report's figures. (workspace, the run's output); tests only read it
    (or dry-run it)."""
    mirror, url = tiny_mirror
    workspace = make_tiny_workspace(tmp_path_factory.mktemp("tiny"), mirror, url, tiny_checkout)
    done = workspace.run("--cores", "2", "all", *TRAINED, "results/cross_protocol.csv", "results/tables/field.csv", *REPORTED)
    return workspace, done
