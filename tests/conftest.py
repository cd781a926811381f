"""Shared fixtures: the official tools' answers in ../shared/testdata, skipped when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TESTDATA = REPO_ROOT.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    """`../shared/testdata` (inputs with the official tools' answers); skip when it is absent."""
    if not SHARED_TESTDATA.is_dir():
        pytest.skip(f"official test data not found at {SHARED_TESTDATA}")
    return SHARED_TESTDATA
