"""Shared fixtures: the official tools' answers in ../shared/testdata (skipped when absent), and
the tiny workflow configuration run once per session in a copy of the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflow_fixtures import REPORTED, TRAINED, fresh_checkout, load_builder, make_tiny_workspace, serve

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
