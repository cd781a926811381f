"""Results with provenance, and the summary table over many results.

A result (`results/<benchmark>/<method>.json`) says what was measured and how to reproduce it:
the scorer's numbers, or for benchmarks an evaluation server scores, the archive to upload and
where (vcorr never makes up a score for those); the vcorr version and git commit; the resolved
method and benchmark configuration; the SHA-256 of every checkpoint read; and the timings of
propagation and scoring (Snakemake benchmark files, or any TSV with an `s` column of seconds).
"""

from __future__ import annotations

import csv
import datetime
import json
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vcorr import __version__
from vcorr.errors import VcorrError
from vcorr.evaluation.scoring import HEADLINES
from vcorr.io import atomic_file, sha256_file, write_json
from vcorr.provenance import git_state, package_version

# What one unit of each scorer's numbers is in percent, as its official tool writes them (and the
# scores JSON keeps them): davis2017-evaluation's J&F is a fraction, the VFS / Spa-then-Temp PCK
# and VIP's mIoU are percent. The tables and the page show every headline in percent, the unit in
# the column name, so that J&F never stands as 0.62 beside a PCK of 45.
PERCENT_PER_UNIT: dict[str, float] = {"davis": 100.0, "jhmdb": 1.0, "vip": 1.0}
_SCORER_OF = {name: scorer for scorer, names in HEADLINES.items() for name in names}


def headline_column(name: str) -> str:
    """The table column of a headline score: its name and unit (`J&F-Mean (%)`)."""
    return f"{name} (%)"


def headline_percent(name: str, value: float) -> float:
    """A headline score as the scorer wrote it, in percent."""
    return value * PERCENT_PER_UNIT[_SCORER_OF[name]] if name in _SCORER_OF else value
SUMMARY_FIXED = ("benchmark", "method", "status")
SUMMARY_TAIL = ("archive", "upload_to", "result", "note")


def models_trained_by_other_code(weights: Sequence[Path]) -> list[dict[str, Any]]:
    """The models among `weights` that `vcorr train` exported from code other than today's (the
    digests it recorded are not this checkout's `training_code_digest` of their method)."""
    from vcorr.train import export_provenance, training_code_digest

    stale = []
    for path in weights:
        record = export_provenance(path)
        if record is None:
            continue
        current = training_code_digest(record["method"])
        if record["training_code"] != [current]:
            stale.append({"path": str(path), "method": record["method"], "trained_with": record["training_code"],
                          "current": current})
    return stale


def read_timing(path: Path) -> dict[str, float]:
    """Seconds (and peak memory when recorded) from a Snakemake benchmark TSV."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except FileNotFoundError:
        raise VcorrError(f"{path}: timing file missing") from None
    if not rows or "s" not in rows[0]:
        raise VcorrError(f"{path}: not a benchmark TSV (a header with an 's' column of seconds and one row)")
    timing = {"seconds": float(rows[-1]["s"])}
    if rows[-1].get("max_rss") not in (None, "", "NA", "-"):
        timing["max_rss_mb"] = float(rows[-1]["max_rss"])
    return timing


def timings(propagate: Sequence[Path], evaluate: Sequence[Path]) -> dict[str, Any]:
    """Wall-clock seconds of propagation (summed over shards) and of scoring or export."""
    parts = [read_timing(path) for path in propagate]
    result: dict[str, Any] = {
        "propagate_s": round(sum(part["seconds"] for part in parts), 3),
        "propagate_jobs": len(parts),
    }
    peaks = [part["max_rss_mb"] for part in parts if "max_rss_mb" in part]
    if peaks:
        result["propagate_max_rss_mb"] = max(peaks)
    if evaluate:
        result["evaluate_s"] = round(sum(read_timing(path)["seconds"] for path in evaluate), 3)
    return result


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VcorrError(f"{path}: missing ({what})") from None
    except json.JSONDecodeError as error:
        raise VcorrError(f"{path}: not valid JSON ({what}: {error})") from None


def find_headlines(scores: Any, names: Iterable[str]) -> dict[str, float]:
    """The named numbers from a scorer's JSON: at its top level or one mapping down."""
    names = list(names)
    levels = [scores] + [value for value in scores.values() if isinstance(value, dict)] if isinstance(scores, dict) else []
    for level in levels:
        found = {name: level[name] for name in names if isinstance(level.get(name), (int, float))}
        if found:
            return found
    return {}


def build_result(
    benchmark: str,
    method_name: str,
    evaluation: Path,
    weights: Sequence[Path] = (),
    propagate_timings: Sequence[Path] = (),
    evaluate_timings: Sequence[Path] = (),
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    from vcorr.config import parse_overrides, registry_entry
    from vcorr.evaluation.methods import load_method

    benchmark_entry = registry_entry("benchmarks", benchmark)
    method = load_method(method_name)
    settings = method.settings_for(benchmark, list(overrides))
    scorer = benchmark_entry["scorer"]
    evaluation = Path(evaluation)
    result: dict[str, Any] = {"benchmark": benchmark, "method": method.name}
    if scorer == "server":
        if evaluation.suffix != ".zip" or not evaluation.is_file():
            raise VcorrError(f"{evaluation}: {benchmark} is scored by an evaluation server; expected the .zip archive")
        server = benchmark_entry.get("server") or {}
        result.update(
            status="awaiting server evaluation",
            scores=None,
            submission={
                "archive": str(evaluation),
                "archive_sha256": sha256_file(evaluation),
                "archive_bytes": evaluation.stat().st_size,
                "upload_to": server.get("url"),
                "archive_layout": server.get("archive"),
                "note": f"{benchmark} has no public ground truth: upload the archive to the server; vcorr reports no score",
            },
        )
    else:
        scores = _load_json(evaluation, f"scores of `vcorr score {scorer}`")
        headlines = find_headlines(scores, HEADLINES.get(scorer, ()))
        if not headlines:
            raise VcorrError(f"{evaluation}: none of {', '.join(HEADLINES.get(scorer, ()))} found in the scores")
        result.update(status="scored", headline=headlines, scores=scores, submission=None)
    stale = models_trained_by_other_code(weights)
    if stale:
        result["note"] = (f"model trained by other code: {', '.join(entry['path'] for entry in stale)} "
                          "(vcorr's training code changed since; `snakemake --forcerun train` retrains)")
    result["provenance"] = {
        "vcorr_version": __version__,
        "git": git_state(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "method": method.as_dict(),
        "benchmark": {"name": benchmark, **benchmark_entry},
        "settings": settings.as_dict(),
        "overrides": parse_overrides(list(overrides)),
        "checkpoints": [
            {"path": str(path), "sha256": sha256_file(Path(path)), "bytes": Path(path).stat().st_size} for path in weights
        ],
        "trained_by_other_code": stale,
        "timings": timings(propagate_timings, evaluate_timings),
    }
    return result


def write_result(out: Path, **kwargs: Any) -> dict[str, Any]:
    result = build_result(**kwargs)
    write_json(out, result)
    return result


def summary_rows(result_files: Sequence[Path]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per result: benchmark, method, status, headline scores (in percent), archive and
    upload page."""
    rows, metric_columns = [], []
    for path in result_files:
        result = _load_json(path, "a result of `vcorr report result`")
        if not isinstance(result, dict) or not {"benchmark", "method", "status"} <= set(result):
            raise VcorrError(f"{path}: not a vcorr result (needs benchmark, method, status)")
        headline = {headline_column(name): headline_percent(name, value)
                    for name, value in (result.get("headline") or {}).items()}
        for name in headline:
            if name not in metric_columns:
                metric_columns.append(name)
        submission = result.get("submission") or {}
        rows.append({
            "benchmark": result["benchmark"],
            "method": result["method"],
            "status": result["status"],
            **headline,
            "archive": submission.get("archive", ""),
            "upload_to": submission.get("upload_to", ""),
            "result": str(path),
            "note": result.get("note", ""),
        })
    return [*SUMMARY_FIXED, *metric_columns, *SUMMARY_TAIL], rows


def write_table(out: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> int:
    """`rows` as a CSV of `columns` (absent values empty, other keys left out), atomically."""
    with atomic_file(out) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return len(rows)


def write_summary(result_files: Sequence[Path], out: Path) -> int:
    columns, rows = summary_rows(result_files)
    return write_table(out, columns, rows)


def crosscheck_davis(
    davis_root: Path, results: Path, subset: str, scores_file: Path, tolerance: float = 1e-6
) -> dict[str, Any]:
    """vcorr's DAVIS-2017 J&F next to the official davis2017-evaluation's on the same results.

    Needs the official package (`davis2017`, envs/davis2017-eval.yaml). Raises when the two
    disagree by more than `tolerance`, so a cluster run fails loudly instead of reporting a
    number the official tool would not give.
    """
    try:
        from davis2017.evaluation import DAVISEvaluation
    except ImportError:
        raise VcorrError(
            "the official davis2017-evaluation is not installed: run this rule with "
            "--software-deployment-method conda (envs/davis2017-eval.yaml)"
        ) from None
    import numpy as np

    ours = find_headlines(_load_json(scores_file, "scores of `vcorr score davis`"), HEADLINES["davis"])
    measured = DAVISEvaluation(davis_root=str(davis_root), task="semi-supervised", gt_set=subset).evaluate(str(results))
    j_mean = float(np.mean(measured["J"]["M"]))
    f_mean = float(np.mean(measured["F"]["M"]))
    official = {"J&F-Mean": (j_mean + f_mean) / 2, "J-Mean": j_mean, "F-Mean": f_mean}
    differences = {name: abs(official[name] - ours[name]) for name in official if name in ours}
    report = {"vcorr": ours, "official": official, "abs_difference": differences, "tolerance": tolerance}
    if not differences or max(differences.values()) > tolerance:
        raise VcorrError(f"vcorr and davis2017-evaluation disagree on {results}: {json.dumps(report)}")
    return report
