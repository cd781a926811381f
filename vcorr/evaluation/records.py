"""Propagation records: what `vcorr propagate` writes beside its predictions so that later steps
know which predictions are complete and how they were made.

Per run, `<out>/.vcorr-propagate[.shard-I-of-N].json` names the method, its resolved settings, the
digests of the weights and of the prediction code, the sequences of the run with the frames each
must hold, and every sequence of the benchmark. The pipeline reads them to reuse or refuse earlier
predictions; `vcorr export` reads them to refuse half-finished runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vcorr.errors import VcorrError

RECORD_PREFIX = ".vcorr-propagate"


def record_path(out: Path, shard: tuple[int, int] | None) -> Path:
    """Where a propagation run records itself; shards sharing a folder each keep their own."""
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return Path(out) / f"{RECORD_PREFIX}{suffix}.json"


def read_records(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(Path(folder).glob(f"{RECORD_PREFIX}*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise VcorrError(f"{path}: not a vcorr propagation record ({error})") from None
        if not isinstance(record, dict) or not isinstance(record.get("sequences"), dict) or "benchmark" not in record:
            raise VcorrError(f"{path}: not a vcorr propagation record (needs 'benchmark' and 'sequences')")
        record["_path"] = str(path)
        records.append(record)
    return records


def missing_frames(folder: Path, record: dict[str, Any]) -> dict[str, list[str]]:
    """Sequences of a record whose folder under `folder` lacks some of the listed frames."""
    missing = {}
    for sequence, frames in record["sequences"].items():
        absent = [frame for frame in frames if not (Path(folder) / sequence / f"{frame}.png").is_file()]
        if absent:
            missing[sequence] = absent
    return missing


def _comparable(record: dict) -> dict:
    """What must agree for predictions to be reused (weights by content: the folder may move)."""
    method = {key: value for key, value in record["method"].items() if key != "source"}
    return {
        "benchmark": record["benchmark"],
        "method": method,
        "settings": record["settings"],
        # Keyed by encoder index; None for a record older than weights hashing.
        "weights": {str(index): entry.get("sha256") for index, entry in enumerate(record["weights"])}
        if isinstance(record.get("weights"), list) else None,
        "vcorr_version": record.get("vcorr_version"),
        "prediction_code": record.get("prediction_code"),
    }


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    return {key: item for name, entry in value.items() for key, item in _flatten(entry, f"{prefix}{name}.").items()}


def record_differences(existing: dict, record: dict) -> list[str]:
    """`key: recorded -> now` for every comparable value that differs (digests shortened)."""

    def shown(value) -> str:
        return json.dumps(value[:12] + "..." if isinstance(value, str) and len(value) == 64 else value)

    old, new = _flatten(_comparable(existing)), _flatten(_comparable(record))
    keys = [*new, *(key for key in old if key not in new)]
    return [f"{key.rstrip('.')}: {shown(old.get(key))} -> {shown(new.get(key))}" for key in keys if old.get(key) != new.get(key)]


def differing_records(out: Path, record: dict) -> list[dict]:
    """The records of `out` (one per run or shard) of predictions made otherwise than `record`."""
    if not out.is_dir():
        return []
    return [existing for existing in read_records(out) if _comparable(existing) != _comparable(record)]


def refuse_differing(out: Path, record: dict, differing: list[dict]) -> None:
    existing = differing[0]
    changes = record_differences(existing, record)
    if any(change.startswith("weights.") for change in changes):
        changes.append(f"this run reads {', '.join(entry['file'] for entry in record['weights'])}")
    raise VcorrError(
        f"{existing['_path']}: {out} holds predictions made with other settings (recorded -> this run: "
        f"{'; '.join(changes)}); rerun with --force to delete and redo them, or choose another --out"
    )
