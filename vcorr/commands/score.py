"""`vcorr score davis|jhmdb|vip`: arguments for `vcorr.evaluation.scoring`.

Every scorer takes `--data-root` (the dataset root as the official tools take it),
`--predictions` (the `vcorr propagate --out` folder) and `--out` (the JSON). `--benchmark` (a
config/benchmarks.yaml entry scored by this scorer) supplies what is not given: the DAVIS subset
and year, the JHMDB split list, the VIP video list (the root's own when present, else the one
vcorr ships), so the scorers read the same lists propagation read.

Deprecated spellings, kept for one release: --davis-root / --jhmdb-root / --vip-root (for
--data-root) and --results (for --predictions).

  davis  J&F (davis2017-evaluation, semi-supervised); also writes the official CSVs
         global_results-<subset>.csv and per-sequence_results-<subset>.csv into --csv-dir
         (default: the predictions folder, as the official tool does), recomputed on every run.
  jhmdb  PCK@0.1..0.5 (VFS / Spa-then-Temp evaluation) from <action>/<clip>.npy [2, 15, T] (x, y)
         coordinates, 0-based.
  vip    mIoU over 20 classes, one confusion matrix over all frames.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vcorr.errors import VcorrError

# The benchmark whose registry entry fills what a scorer is not given.
DEFAULT_BENCHMARK = {"davis": "davis17", "jhmdb": "jhmdb", "vip": "vip"}


def _common(parser: argparse.ArgumentParser, scorer: str, out_required: bool) -> None:
    parser.add_argument("--data-root", f"--{scorer}-root", dest="data_root", type=Path, required=True, metavar="DIR",
                        help=f"the dataset root (--{scorer}-root: deprecated spelling)")
    parser.add_argument("--predictions", "--results", dest="predictions", type=Path, required=True, metavar="DIR",
                        help="the `vcorr propagate --out` folder (--results: deprecated spelling)")
    parser.add_argument("--out", type=Path, required=out_required, metavar="FILE.json",
                        help="the scores JSON (global, per sequence or clip, provenance)"
                             + ("" if out_required else "; without it only the table and the official CSVs"))
    parser.add_argument("--benchmark", default=DEFAULT_BENCHMARK[scorer],
                        help=f"config/benchmarks.yaml entry supplying the lists (default {DEFAULT_BENCHMARK[scorer]})")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("score", help="score results like the official tools (J&F, PCK, mIoU)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scorers = parser.add_subparsers(dest="scorer", metavar="<scorer>", required=True)

    davis = scorers.add_parser("davis", help="DAVIS semi-supervised J&F")
    _common(davis, "davis", out_required=False)
    davis.add_argument("--subset", help="ImageSets/<year>/<subset>.txt (default: the benchmark's, val)")
    davis.add_argument("--year", type=int, choices=(2017, 2016),
                       help="2016 merges every object id into one object (default: the benchmark's, 2017)")
    davis.add_argument("--csv-dir", type=Path, metavar="DIR",
                       help="where the official CSVs go (default: the predictions folder)")
    davis.add_argument("--jobs", type=int, default=None, help="processes (default: number of CPUs)")
    davis.set_defaults(func=run_davis)

    jhmdb = scorers.add_parser("jhmdb", help="JHMDB keypoint PCK@alpha")
    _common(jhmdb, "jhmdb", out_required=True)
    jhmdb.add_argument("--split", type=Path,
                       help="seeds-format list, one '<...>/joint_positions/<action>/<clip>/joint_positions.mat "
                            "<.../Rename_Images/<action>/<clip>>' per line (default: the benchmark's video_list inside --data-root when present, else its split_list)")
    jhmdb.set_defaults(func=run_jhmdb)

    vip = scorers.add_parser("vip", help="VIP part propagation mIoU")
    _common(vip, "vip", out_required=True)
    vip.add_argument("--list", type=Path, help="video list (default: the benchmark's: <data-root>/lists/val_videos.txt "
                                               "when present, else the list vcorr ships)")
    vip.set_defaults(func=run_vip)


def _benchmark(args: argparse.Namespace):
    from vcorr.data.benchmarks import benchmark

    entry = benchmark(args.benchmark)
    if entry.scorer != args.scorer:
        raise VcorrError(f"--benchmark {entry.name}: scored by '{entry.scorer}', not by `vcorr score {args.scorer}`")
    return entry


def run_davis(args: argparse.Namespace) -> int:
    from vcorr.evaluation.scoring import score_davis

    entry = _benchmark(args)
    score_davis(args.data_root, args.predictions, args.out, args.subset or entry.subset, args.year or entry.year,
                args.jobs, args.csv_dir)
    return 0


def run_jhmdb(args: argparse.Namespace) -> int:
    from vcorr.evaluation.scoring import score_jhmdb

    split = args.split or _benchmark(args).sequence_list(args.data_root)
    score_jhmdb(args.data_root, args.predictions, split, args.out)
    return 0


def run_vip(args: argparse.Namespace) -> int:
    from vcorr.evaluation.scoring import score_vip

    video_list = args.list or _benchmark(args).sequence_list(args.data_root)
    score_vip(args.data_root, args.predictions, video_list, args.out)
    return 0
