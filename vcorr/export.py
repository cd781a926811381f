"""Submission archives for the server-scored benchmarks, and the propagation records they check.

`vcorr propagate` writes `<out>/<sequence>/<frame>.png` and, per run, a record
`<out>/.vcorr-propagate[.shard-I-of-N].json` naming the method, its resolved settings, the
sequences of the run with the frames each must hold, and every sequence of the benchmark. A
submission is built only when the records of the given folders cover every sequence of the
benchmark and every listed frame exists, so a half-finished run is never uploaded.

The archive layout each server accepts is its benchmark's `server.archive_prefix` in
config/benchmarks.yaml (YouTube-VOS: `Annotations/<video>/<frame>.png`, DAVIS-2017 test-dev:
`<sequence>/<frame>.png`, both at the zip root).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from vcorr.errors import VcorrError
from vcorr.io import atomic_file

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


def export_submission(benchmark: str, predictions: list[Path], out: Path) -> dict[str, int]:
    """Zip the predictions of `benchmark` found in `predictions` (one folder, or one per shard)."""
    from vcorr.data.benchmarks import benchmark as benchmark_entry, server_benchmarks

    entry = benchmark_entry(benchmark)
    if entry.scorer != "server":
        raise VcorrError(f"benchmark '{benchmark}' is not scored by a server (export supports {', '.join(server_benchmarks())})")
    sources: dict[str, tuple[Path, list[str]]] = {}  # sequence -> (folder, frames)
    expected: set[str] | None = None
    for folder in predictions:
        folder = Path(folder)
        if not folder.is_dir():
            raise VcorrError(f"{folder}: predictions folder missing")
        records = read_records(folder)
        if not records:
            raise VcorrError(
                f"{folder}: no {RECORD_PREFIX}*.json record, so nothing says which predictions are complete "
                "(is this the --out folder of `vcorr propagate`?)"
            )
        for record in records:
            if record["benchmark"] != benchmark:
                raise VcorrError(f"{record['_path']}: predictions for benchmark '{record['benchmark']}', not '{benchmark}'")
            incomplete = missing_frames(folder, record)
            if incomplete:
                sequence, frames = next(iter(incomplete.items()))
                raise VcorrError(
                    f"{folder}: {len(incomplete)} sequence(s) incomplete, e.g. {folder / sequence} lacks "
                    f"{len(frames)} frame(s) such as {frames[0]}.png (rerun `vcorr propagate` to finish them)"
                )
            for sequence, frames in record["sequences"].items():
                sources[sequence] = (folder, frames)
            expected = (expected or set()) | set(record.get("benchmark_sequences", []))
    absent = sorted((expected or set()) - set(sources))
    if absent:
        raise VcorrError(
            f"predictions cover {len(sources)} of the {len(expected)} sequences of {benchmark}; missing e.g. "
            f"{', '.join(absent[:5])} (propagate every sequence / shard before exporting)"
        )
    if not sources or not any(frames for _folder, frames in sources.values()):
        raise VcorrError(f"{', '.join(map(str, predictions))}: no predicted frames to export")

    prefix = entry.archive_prefix
    frame_count = 0
    with atomic_file(out) as temporary:
        # PNGs are already compressed: storing them keeps the zip fast to build and to unpack.
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:
            for sequence in sorted(sources):
                folder, frames = sources[sequence]
                for frame in frames:
                    archive.write(folder / sequence / f"{frame}.png", f"{prefix}{sequence}/{frame}.png")
                    frame_count += 1
    return {"sequences": len(sources), "frames": frame_count}
