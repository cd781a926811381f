"""`vcorr report result|summary|crosscheck-davis`: results JSON with provenance, summary table."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("report", help="results with provenance, summary table, official cross-check",
                                   description=__doc__)
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)

    result = actions.add_parser(
        "result", help="one (benchmark, method) result: scores or upload instructions, with provenance")
    result.add_argument("--benchmark", required=True)
    result.add_argument("--method", required=True, help="a method of config/methods.yaml or a method YAML file")
    result.add_argument("--evaluation", required=True, type=Path, metavar="FILE",
                        help="the scorer's JSON, or the .zip archive for a server-scored benchmark")
    result.add_argument("--weights", nargs="*", type=Path, default=[], metavar="FILE",
                        help="checkpoints the method read (their SHA-256 is recorded)")
    result.add_argument("--propagate-timings", nargs="*", type=Path, default=[], metavar="TSV",
                        help="Snakemake benchmark files of the propagation job(s)")
    result.add_argument("--evaluate-timings", nargs="*", type=Path, default=[], metavar="TSV",
                        help="Snakemake benchmark file of the scoring or export job")
    result.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="the --set overrides propagation was given (recorded in the resolved settings)")
    result.add_argument("--out", required=True, type=Path, metavar="FILE.json")
    result.set_defaults(func=run_result)

    summary = actions.add_parser("summary", help="a CSV row per result JSON")
    summary.add_argument("results", nargs="+", type=Path, metavar="RESULT.json")
    summary.add_argument("--out", required=True, type=Path, metavar="FILE.csv")
    summary.set_defaults(func=run_summary)

    crosscheck = actions.add_parser(
        "crosscheck-davis", help="compare vcorr's J&F with the official davis2017-evaluation (DAVIS-2017)")
    crosscheck.add_argument("--data-root", "--davis-root", dest="data_root", required=True, type=Path,
                            help="the DAVIS root (--davis-root: deprecated spelling)")
    crosscheck.add_argument("--predictions", "--results", dest="predictions", required=True, type=Path,
                            help="the `vcorr propagate --out` folder (--results: deprecated spelling)")
    crosscheck.add_argument("--subset", default="val")
    crosscheck.add_argument("--scores", required=True, type=Path, help="the JSON of `vcorr score davis`")
    crosscheck.add_argument("--tolerance", type=float, default=1e-6)
    crosscheck.add_argument("--out", required=True, type=Path)
    crosscheck.set_defaults(func=run_crosscheck)


def run_result(args: argparse.Namespace) -> int:
    from vcorr.report import write_result

    result = write_result(
        args.out,
        benchmark=args.benchmark,
        method_name=args.method,
        evaluation=args.evaluation,
        weights=args.weights,
        propagate_timings=args.propagate_timings,
        evaluate_timings=args.evaluate_timings,
        overrides=args.overrides,
    )
    print(f"{args.out}: {result['status']}")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from vcorr.report import write_summary

    print(f"{args.out}: {write_summary(args.results, args.out)} results")
    return 0


def run_crosscheck(args: argparse.Namespace) -> int:
    from vcorr.io import write_json
    from vcorr.report import crosscheck_davis

    write_json(args.out, crosscheck_davis(args.data_root, args.predictions, args.subset, args.scores, args.tolerance))
    print(f"{args.out}: vcorr and davis2017-evaluation agree")
    return 0
