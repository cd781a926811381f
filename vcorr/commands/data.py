"""`vcorr data fetch|extract|index|list|demo`: datasets and released weights, one documented layout.

  resources/downloads/<id>/<file>   fetch (or place by hand); each with a <file>.sha256 sidecar
  resources/data/<id>/              extract; a benchmark's `root` (config/benchmarks.yaml) is its official dataset root
  resources/index/<id>.csv          index; counts checked against config/datasets.yaml
  resources/data/demo/              demo: built here from material vcorr[demo] installs
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="fetch, extract and index datasets and released weights",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)

    fetch = actions.add_parser("fetch", help="download (or accept placed) files into resources/downloads/<id>/")
    fetch.add_argument("id", help="an id of config/datasets.yaml")
    fetch.add_argument("--dest", type=Path, default=Path("resources/downloads"))
    fetch.add_argument("--mirror", help="scheme://host[:port][/prefix] replacing the URLs' scheme and host "
                                        "(default: $VCORR_MIRROR)")
    fetch.add_argument("--retries", type=int, default=6, help="attempts per file (default 6)")
    fetch.add_argument("--backoff", type=float, default=2.0,
                       help="seconds before the 2nd attempt, doubled for each next one (default 2)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    fetch.set_defaults(func=run_fetch)

    extract = actions.add_parser("extract", help="unpack resources/downloads/<id>/ into resources/data/<id>/")
    extract.add_argument("id")
    extract.add_argument("--downloads", type=Path, default=Path("resources/downloads"))
    extract.add_argument("--dest", type=Path, default=Path("resources/data"))
    extract.add_argument("--force", action="store_true", help="redo even when up to date")
    extract.set_defaults(func=run_extract)

    index = actions.add_parser("index", help="write the frame table of resources/data/<id>/ and check its counts")
    index.add_argument("id")
    index.add_argument("--data", type=Path, default=Path("resources/data"))
    index.add_argument("--out", type=Path, help="CSV to write (default resources/index/<id>.csv)")
    index.add_argument("--allow-partial", action="store_true",
                       help="write the index even when expected counts are not met (reported as warnings)")
    index.add_argument("--no-sizes", action="store_true", help="skip reading image headers (height/width = 0)")
    index.set_defaults(func=run_index)

    listing = actions.add_parser("list", help="the registry's ids")
    listing.set_defaults(func=run_list)

    demo = actions.add_parser("demo", help="build the demo dataset from photos and clips that install with vcorr[demo]",
                              description="Training images and clips, and DAVIS / JHMDB / VIP_Fine evaluation "
                                          "videos with exact ground truth (see vcorr.data.demo).")
    demo.add_argument("--out", type=Path, default=Path("resources/data/demo"),
                      help="folder to (re)write as a whole (default resources/data/demo)")
    demo.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes (default 0)")
    demo.add_argument("--frames", type=int, help="frames per evaluation video (default 12)")
    demo.add_argument("--frame-size", type=int, nargs=2, metavar=("H", "W"),
                      help="evaluation frame size (default 240 320)")
    demo.set_defaults(func=run_demo)


def run_fetch(args) -> int:
    from vcorr.data.fetch import RetryPolicy, fetch

    policy = RetryPolicy(attempts=max(args.retries, 1), backoff_s=args.backoff, timeout_s=args.timeout)
    for path in fetch(args.id, args.dest, args.mirror, policy):
        print(path)
    return 0


def run_extract(args) -> int:
    from vcorr.data.extract import extract

    print(extract(args.id, args.downloads, args.dest, force=args.force))
    return 0


def run_index(args) -> int:
    from vcorr.data.index import write_index

    out = args.out or Path("resources/index") / f"{args.id}.csv"
    report = write_index(args.id, args.data, out, allow_partial=args.allow_partial, with_sizes=not args.no_sizes)
    print(f"{out}: {len(report.table)} rows")
    return 0


def run_list(args) -> int:
    from vcorr.data.datasets import dataset, dataset_ids

    for dataset_id in dataset_ids():
        entry = dataset(dataset_id)
        how = "manual" if entry.manual else f"derived from {entry.derived_from}" if entry.derived_from else "auto"
        print(f"{dataset_id:22s} {entry.kind:8s} {how:20s} {entry.title}")
    return 0


def run_demo(args) -> int:
    from vcorr.data.demo import DemoConfig, build_demo

    sizes = {"frames": args.frames, "frame_size": tuple(args.frame_size) if args.frame_size else None}
    config = DemoConfig(**{key: value for key, value in sizes.items() if value is not None})
    print(build_demo(args.out, seed=args.seed, config=config).line())
    return 0
