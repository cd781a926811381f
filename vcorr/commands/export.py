"""`vcorr export`: the submission archive of a server-scored benchmark (YouTube-VOS, DAVIS test-dev)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="zip predictions in the layout an evaluation server accepts",
        description=(
            "Build the upload archive for a server-scored benchmark from `vcorr propagate` output: "
            "YouTube-VOS gets Annotations/<video>/<frame>.png, DAVIS test-dev <sequence>/<frame>.png, "
            "both at the zip root. Refuses predictions that miss a sequence or a frame."
        ),
    )
    parser.add_argument("--benchmark", required=True, help="a server-scored benchmark of config/benchmarks.yaml")
    parser.add_argument(
        "--predictions", required=True, nargs="+", type=Path, metavar="DIR",
        help="the --out folder of `vcorr propagate` (several: one per shard)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.zip", help="archive to write (atomically)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vcorr.data.benchmarks import benchmark
    from vcorr.report.submission import export_submission

    summary = export_submission(args.benchmark, args.predictions, args.out)
    url = (benchmark(args.benchmark).server or {}).get("url", "the benchmark's server")
    print(f"{args.out}: {summary['sequences']} sequences, {summary['frames']} frames; upload it at {url}")
    return 0
