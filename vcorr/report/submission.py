"""Submission archives for the server-scored benchmarks.

`vcorr propagate` writes `<out>/<sequence>/<frame>.png` and a record of each run
(`vcorr.evaluation.records`). A submission is built only when the records of the given folders
cover every sequence of the benchmark and every listed frame exists, so a half-finished run is
never uploaded.

The archive layout each server accepts is its benchmark's `server.archive_prefix` in
config/benchmarks.yaml (YouTube-VOS: `Annotations/<video>/<frame>.png`, DAVIS-2017 test-dev:
`<sequence>/<frame>.png`, both at the zip root).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from vcorr.errors import VcorrError
from vcorr.evaluation.records import RECORD_PREFIX, missing_frames, read_records
from vcorr.io import atomic_file


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
