"""The documentation says true things that are cheap to check: every repository path the README
names exists, and every README section that a config file, profile or workflow file points to is
a heading of the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOP_LEVEL = ("vcorr", "workflow", "config", "tests", "benchmarks", "profiles", "envs", ".test", ".ci")
# Files where other files point into the README.
POINTING = [*sorted((REPO / "config").rglob("*.yaml")), *sorted((REPO / "profiles").rglob("*.yaml")),
            REPO / "workflow" / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def readme_paths() -> list[str]:
    """Repository paths the README names in backticks (placeholders and globs left out)."""
    found = re.findall(r"`([^`\s]+)`", README.read_text())
    names = {token.rstrip("/.,") for token in found if token.split("/", 1)[0] in TOP_LEVEL and "/" in token}
    return sorted(name for name in names if not re.search(r"[<>{}*|…]|\.\.\.", name))


def headings() -> set[str]:
    return {match.strip() for match in re.findall(r"^#+ (.+)$", README.read_text(), flags=re.M)}


@pytest.mark.parametrize("path", readme_paths())
def test_every_path_the_readme_names_exists(path):
    assert (REPO / path).exists(), f"README.md names {path}, which is not in the repository"


def test_the_readme_names_paths_at_all():
    assert len(readme_paths()) > 20  # the pattern above still finds them


def missing_sections(text: str) -> list[str]:
    """README sections `text` points to (`README "Section"`, `(README: Section)`) that are not headings."""
    pointed = re.findall(r'README "([^"]+)"', text) + re.findall(r"\(README: ([A-Z][\w ,'-]+)\)", text)
    return [section for section in pointed if section not in headings()]


@pytest.mark.parametrize("source", POINTING, ids=lambda path: str(path.relative_to(REPO)))
def test_every_readme_section_pointed_to_exists(source):
    missing = missing_sections(source.read_text())
    assert not missing, f"{source.relative_to(REPO)} points to README sections {missing}, not headings of README.md"


def test_a_pointer_to_a_missing_section_is_caught():
    text = '# see README "Training on a cluster" and (README: Slurm), README "Training in the workflow"'
    assert missing_sections(text) == ["Training on a cluster"]


def test_the_readme_lists_every_released_method():
    """The supported methods table names each method of methods.yaml a download lets one run."""
    import yaml

    methods = yaml.safe_load((REPO / "config" / "methods.yaml").read_text())
    benchmarks = yaml.safe_load((REPO / "config" / "benchmarks.yaml").read_text())
    datasets = yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())
    table = README.read_text().split("Supported methods:", 1)[1].split("\n\n", 2)[1]
    for name, entry in methods.items():
        trained = any("path" in (encoder.get("weights") or {}) for encoder in entry["encoders"])
        demo = all(datasets[benchmarks[b]["dataset"]].get("built_by") for b in entry["benchmarks"])
        if not trained and not demo:
            assert f"`{name}`" in table, f"README's supported methods table lacks {name}"
