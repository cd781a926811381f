"""`vcorr report result|summary|cross-protocol|table|agreement|crosscheck-davis|figures|page`: results
JSON with provenance, summary, cross-protocol and published-number tables, the agreement with a
release's own masks, charts and overlays, and the HTML page that shows them."""

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

    cross = actions.add_parser(
        "cross-protocol", help="every method under both propagation protocols (vcorr.evaluation.cross_protocol)")
    cross.add_argument("results", nargs="*", type=Path, metavar="RESULT.json",
                       help="the result of every cell that can be evaluated (<method>.json, <method>@<protocol>.json)")
    cross.add_argument("--methods", nargs="+", required=True, help="methods of config/methods.yaml")
    cross.add_argument("--benchmarks", nargs="+", required=True, help="benchmarks of config/benchmarks.yaml")
    cross.add_argument("--out", required=True, type=Path, metavar="FILE.csv")
    cross.set_defaults(func=run_cross_protocol)

    table = actions.add_parser(
        "table", help="a table of config/published.yaml: vcorr's numbers beside the published ones (vcorr.report.tables)")
    table.add_argument("table", metavar="NAME", help="a table of published.yaml (field, hvc, stt, ...)")
    table.add_argument("results", nargs="*", type=Path, metavar="RESULT.json",
                       help="the result of every cell of the table that can be evaluated")
    table.add_argument("--out", required=True, type=Path, metavar="FILE.csv")
    table.set_defaults(func=run_table)

    agreement = actions.add_parser(
        "agreement", help="vcorr's predictions of a released model against its authors' masks (vcorr.report.agreement)")
    agreement.add_argument("--benchmark", required=True, help="a benchmark scored by vcorr score davis")
    agreement.add_argument("--data-root", required=True, type=Path, help="the dataset root (e.g. resources/data/davis17/DAVIS)")
    agreement.add_argument("--predictions", required=True, type=Path, help="vcorr's predictions (`vcorr propagate --out`)")
    agreement.add_argument("--masks", required=True, type=Path,
                           help="the authors' masks: the folder that holds <sequence>/<frame>.png")
    agreement.add_argument("--method", required=True, help="the released model's method (recorded)")
    agreement.add_argument("--jobs", type=int, default=1, help="scoring processes")
    agreement.add_argument("--out", required=True, type=Path, metavar="FILE.json")
    agreement.set_defaults(func=run_agreement)

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

    figures = actions.add_parser("figures", help="charts of scores and training curves, mask overlays (PNG/GIF)")
    kinds = figures.add_subparsers(dest="figure", metavar="<figure>", required=True)
    scores = kinds.add_parser("scores", help="grouped bars per headline metric, method and protocol")
    scores.add_argument("table", type=Path, metavar="TABLE.csv",
                        help="results/summary.csv or the cross-protocol table (method, protocol, benchmark, metrics)")
    scores.add_argument("--metrics", nargs="+", metavar="NAME", help="the metric columns to draw (default: all)")
    scores.add_argument("--out", required=True, type=Path, metavar="FILE.png")
    scores.set_defaults(func=run_score_chart)
    losses = kinds.add_parser("losses", help="training curves, one column of panels per stage")
    losses.add_argument("stages", nargs="+", metavar="STAGE=metrics.csv", help="a training stage's name and metrics.csv")
    losses.add_argument("--out", required=True, type=Path, metavar="FILE.png")
    losses.set_defaults(func=run_loss_curves)
    strip = kinds.add_parser("overlay", help="ground truth beside prediction on a few frames of a sequence")
    strip.add_argument("--frames", type=Path, metavar="DIR", help="the sequence's JPEG frames (with --truth)")
    strip.add_argument("--truth", type=Path, metavar="DIR", help="its ground-truth label PNGs")
    strip.add_argument("--benchmark", help="instead of --frames/--truth: the sequence's benchmark (davis17, vip ...)")
    strip.add_argument("--root", type=Path, metavar="DIR", help="with --benchmark: the dataset root")
    strip.add_argument("--sequence", help="with --benchmark: the sequence (video) name")
    strip.add_argument("--pred", required=True, type=Path, metavar="DIR", help="its predicted label PNGs")
    which = strip.add_mutually_exclusive_group()
    which.add_argument("--count", type=int, default=4, help="frames to show, evenly spaced (default 4)")
    which.add_argument("--frame", dest="names", action="append", metavar="NAME", help="a frame to show (repeatable)")
    strip.add_argument("--height", type=int, default=240, help="scale taller frames down to this many pixels")
    strip.add_argument("--out", required=True, type=Path, metavar="FILE.png|FILE.gif",
                       help="a .gif is animated (one frame each); anything else is a PNG strip")
    strip.set_defaults(func=run_overlay)

    page = actions.add_parser("page", help="one self-contained HTML page of tables, charts and overlays")
    page.add_argument("--table", dest="tables", action="append", default=[], metavar="HEADING=FILE.csv",
                      help="a score table under a heading (repeatable)")
    page.add_argument("--images", action="append", default=[], metavar="HEADING=FILE[,FILE...]",
                      help="images under a heading (repeatable; embedded in the page)")
    page.add_argument("--note", dest="notes", action="append", default=[], metavar="TEXT",
                      help="a paragraph shown above the tables (repeatable), e.g. that the data are synthetic")
    page.add_argument("--caption", dest="captions", action="append", default=[], metavar="FILE=TEXT",
                      help="what an image of --images shows (repeatable; default: its path)")
    page.add_argument("--title", default="vcorr report")
    page.add_argument("--out", required=True, type=Path, metavar="FILE.html")
    page.set_defaults(func=run_page)


def run_result(args: argparse.Namespace) -> int:
    from vcorr.report.results import write_result

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
    from vcorr.report.results import write_summary

    print(f"{args.out}: {write_summary(args.results, args.out)} results")
    return 0


def run_cross_protocol(args: argparse.Namespace) -> int:
    from vcorr.evaluation.cross_protocol import registry_cells
    from vcorr.report.cross_protocol_table import write_cross_protocol_table

    cells = registry_cells(args.methods, args.benchmarks)
    rows = write_cross_protocol_table(cells, args.results, args.out)
    missing = sum(cell.evaluated_as is None for cell in cells)
    print(f"{args.out}: {rows} cells ({len(args.methods)} methods x {len({cell.protocol for cell in cells})} protocols x {len(args.benchmarks)} benchmarks), "
          f"{rows - missing} evaluated, {missing} not evaluated (reason in `note`)")
    return 0


def run_table(args: argparse.Namespace) -> int:
    from vcorr.config import config_file, load_registry, optional_config_file
    from vcorr.report.published import check_published, table_cells
    from vcorr.report.tables import write_published_table

    where = config_file("published.yaml", "published.yaml (it defines the tables)")
    protocols = load_registry("protocols") if optional_config_file("protocols.yaml") else {}
    published, methods, benchmarks = load_registry("published"), load_registry("methods"), load_registry("benchmarks")
    check_published(published, methods, benchmarks, load_registry("datasets"), str(where))
    cells = table_cells(args.table, published, methods, protocols, benchmarks)
    counts = write_published_table(cells, published, methods, benchmarks, args.results, args.out)
    print(f"{args.out}: {counts['rows']} rows, {counts['evaluated']} evaluated, {counts['published']} with a published "
          f"number, {counts['compared']} compared (not evaluated: the reason in `note`)")
    return 0


def run_agreement(args: argparse.Namespace) -> int:
    from vcorr.report.agreement import write_agreement

    report = write_agreement(args.out, benchmark=args.benchmark, data_root=args.data_root, predictions=args.predictions,
                             masks=args.masks, method=args.method, jobs=args.jobs)
    print(f"{args.out}: {report['frames']} frames, pixel agreement {report['agreement']:.6f}; J&F vcorr "
          f"{report['scores']['vcorr']['J&F-Mean']:.4f}, authors {report['scores']['authors']['J&F-Mean']:.4f}")
    return 0


def run_crosscheck(args: argparse.Namespace) -> int:
    from vcorr.io import write_json
    from vcorr.report.results import crosscheck_davis

    write_json(args.out, crosscheck_davis(args.data_root, args.predictions, args.subset, args.scores, args.tolerance))
    print(f"{args.out}: vcorr and davis2017-evaluation agree")
    return 0


def _named(values: list[str], what: str) -> dict[str, str]:
    """`NAME=VALUE` arguments as an ordered mapping; a malformed one is an error naming it."""
    from vcorr.errors import VcorrError

    named = {}
    for value in values:
        name, separator, rest = value.partition("=")
        if not separator or not name or not rest:
            raise VcorrError(f"{value!r}: expected {what}")
        named[name] = rest
    return named


def run_score_chart(args: argparse.Namespace) -> int:
    from vcorr.report.figures import score_chart

    drawn = score_chart(args.table, args.out, metrics=args.metrics)
    print(f"{args.out}: {', '.join(drawn)}")
    return 0


def run_loss_curves(args: argparse.Namespace) -> int:
    from vcorr.report.figures import loss_curves

    terms = loss_curves(_named(args.stages, "STAGE=metrics.csv"), args.out)
    print(f"{args.out}: " + "; ".join(f"{stage} ({', '.join(names)})" for stage, names in terms.items()))
    return 0


def run_overlay(args: argparse.Namespace) -> int:
    from vcorr.errors import VcorrError
    from vcorr.report.figures import overlay_strip, sequence_folders

    if args.benchmark and args.root and args.sequence and not (args.frames or args.truth):
        frames, truth = sequence_folders(args.benchmark, args.root, args.sequence)
    elif args.frames and args.truth and not (args.benchmark or args.root or args.sequence):
        frames, truth = args.frames, args.truth
    else:
        raise VcorrError("give either --frames and --truth, or --benchmark, --root and --sequence")
    shown = overlay_strip(frames, truth, args.pred, args.out, frames=args.names or args.count, height=args.height)
    print(f"{args.out}: {len(shown)} frames ({', '.join(shown)})")
    return 0


def run_page(args: argparse.Namespace) -> int:
    from vcorr.report.figures import write_report_page

    images = {heading: value.split(",") for heading, value in _named(args.images, "HEADING=FILE[,FILE...]").items()}
    write_report_page(args.out, tables=_named(args.tables, "HEADING=FILE.csv"), images=images, title=args.title,
                      notes=args.notes, captions=_named(args.captions, "FILE=TEXT"))
    print(f"{args.out}: {len(args.tables)} tables, {sum(map(len, images.values()))} images")
    return 0
