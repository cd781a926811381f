"""Code digests that cannot drift (vcorr.provenance): each covers every module its entry point
reaches, found from the code; edits of comments, docstrings or formatting leave it; a run record
made by other code is refused by `vcorr propagate` (redone with --force).

The workflow side (what `snakemake -n` plans after such an edit) is in test_workflow.py.
"""

from __future__ import annotations

import json
import shutil

import pytest

import vcorr.provenance as provenance
from test_trust import davis, png_mtimes, propagate  # noqa: F401  (davis: a fixture)
from vcorr.evaluation.pipeline import prediction_code_digest
from vcorr.evaluation.scoring import scoring_code_digest
from vcorr.train import training_code_digest

SCORERS = ("davis", "jhmdb", "vip")
# A change of code in each module (appended at module level: a statement, not a comment), and what
# each of today's digests must do about it: the modules whose code makes predictions, scores or
# trained models, and one that only reports.
EDITS = {
    "metrics/pck.py": {"prediction": True, "davis": False, "jhmdb": True, "vip": False, "hvc": False},
    "data/readers.py": {"prediction": True, "davis": True, "jhmdb": True, "vip": True, "hvc": True},
    "data/layouts.py": {"prediction": True, "davis": False, "jhmdb": False, "vip": False, "hvc": True},
    "propagation/protocols.py": {"prediction": True, "davis": False, "jhmdb": False, "vip": False, "hvc": False},
    "metrics/davis.py": {"prediction": False, "davis": True, "jhmdb": False, "vip": False, "hvc": False},
    "train/stt.py": {"prediction": False, "davis": False, "jhmdb": False, "vip": False, "hvc": False},
    "train/loop.py": {"prediction": False, "davis": False, "jhmdb": False, "vip": False, "hvc": True},
    "report/results.py": {"prediction": False, "davis": False, "jhmdb": False, "vip": False, "hvc": False},
}


def digests() -> dict[str, str]:
    return {"prediction": prediction_code_digest(), **{name: scoring_code_digest(name) for name in SCORERS},
            "hvc": training_code_digest("hvc")}


@pytest.fixture(scope="module")
def pristine_copy(tmp_path_factory):
    copy = tmp_path_factory.mktemp("package") / "vcorr"
    shutil.copytree(provenance.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.fixture()
def package_copy(pristine_copy, monkeypatch):
    """A copy of the vcorr package that the digests read instead of the installed one; what a test
    edits in it is put back afterwards."""
    sources = {path: path.read_bytes() for path in pristine_copy.rglob("*.py")}
    monkeypatch.setattr(provenance, "PACKAGE_DIR", pristine_copy)
    yield pristine_copy
    for path, source in sources.items():
        if path.read_bytes() != source:
            path.write_bytes(source)


@pytest.mark.parametrize("module", list(EDITS))
def test_a_code_change_moves_exactly_the_digests_of_the_code_that_reaches_it(package_copy, module):
    before = digests()
    path = package_copy / module
    path.write_text(path.read_text() + "\n_EDITED_BY_A_TEST = 1\n")
    after = digests()
    assert {name: after[name] != before[name] for name in before} == EDITS[module]


def test_comments_docstrings_and_formatting_leave_every_digest(package_copy):
    before = digests()
    path = package_copy / "propagation" / "protocols.py"
    source = path.read_text()
    edited = source.replace('"""The two published label propagation protocols', '"""Reworded: the two protocols', 1)
    edited = edited.replace("\n\n\nclass ", "\n\n\n# a new comment\nclass ", 1).replace("(self, label0, topk", "(self,  label0,  topk", 1)
    assert edited != source
    path.write_text(edited + "\n# trailing comment\n")
    assert digests() == before


def test_a_function_entry_covers_what_the_function_names_not_its_neighbours(package_copy):
    # score_davis and score_jhmdb share a module: a helper only score_jhmdb calls is not davis's code.
    scoring = package_copy / "evaluation" / "scoring.py"
    davis, jhmdb = scoring_code_digest("davis"), scoring_code_digest("jhmdb")
    source = scoring.read_text()
    scoring.write_text(source.replace("def read_predicted_coords(path: Path, n_frames: int, n_joints: int):",
                                      "def read_predicted_coords(path: Path, n_frames: int, n_joints: int = 15):", 1))
    assert scoring_code_digest("davis") == davis and scoring_code_digest("jhmdb") != jhmdb


def test_propagate_refuses_a_folder_made_by_other_code_and_force_redoes_it(davis, tmp_path, package_copy, capsys):  # noqa: F811
    # Which edits move the prediction digest is the table above; here, what the CLI does with it.
    out = tmp_path / "pred"
    assert propagate(davis, out, "--sequences", "third") == 0
    recorded = json.loads((out / ".vcorr-propagate.json").read_text())["prediction_code"]
    before = png_mtimes(out)
    path = package_copy / "metrics" / "pck.py"
    path.write_text(path.read_text() + "\n_EDITED_BY_A_TEST = 1\n")
    capsys.readouterr()
    assert propagate(davis, out, "--sequences", "third") == 2
    error = capsys.readouterr().err
    assert f'prediction_code: "{recorded[:12]}..." -> "{prediction_code_digest()[:12]}..."' in error, error
    assert png_mtimes(out) == before
    assert propagate(davis, out, "--sequences", "third", "--force") == 0
    assert json.loads((out / ".vcorr-propagate.json").read_text())["prediction_code"] == prediction_code_digest()
    assert all(png_mtimes(out)[name] != before[name] for name in before)
