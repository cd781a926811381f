"""`vcorr fidelity`: arguments for `vcorr.evaluation.fidelity.compare_with_original`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "fidelity",
        help="propagate a benchmark and compare with an original implementation's outputs, classifying every "
             "differing pixel or joint by vcorr's own margins",
        description="Equality with an original that holds on every CPU: outputs equal except where vcorr's own "
                    "margins show a near-tie within float rounding (the read-out's arg-max or top-5, a query's "
                    "k-th vs (k+1)-th affinity) or a difference carried from such a near-tie at an earlier frame, "
                    "and at most a capped number of such places. Prints one line per sequence; exit 0 when "
                    "faithful, 1 when not (a real deviation or over the cap), 2 on bad input.",
    )
    parser.add_argument("--benchmark", required=True, help="a benchmark of config/benchmarks.yaml (davis17, jhmdb, vip, ...)")
    parser.add_argument("--data-root", required=True, type=Path, metavar="DIR", help="dataset root, as for vcorr propagate")
    parser.add_argument("--method-config", required=True, metavar="NAME-or-FILE",
                        help="a method of config/methods.yaml, or a YAML file with one method's keys")
    parser.add_argument("--original", required=True, type=Path, metavar="DIR",
                        help="the original's outputs laid out as vcorr's predictions: <sequence>/<frame>.png ids "
                             "(palette or greyscale), JHMDB <action>/<clip>.npy [2, 15, T] coordinates")
    parser.add_argument("--weights-root", type=Path, default=Path("resources/data"), metavar="DIR",
                        help="registry weights are read as <weights-root>/<id>/<file> (default: resources/data)")
    parser.add_argument("--sequences", nargs="+", metavar="NAME", help="only these sequences")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="as for vcorr propagate (e.g. ties=cuda for an original run on a GPU)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--predictions", type=Path, metavar="DIR",
                        help="keep vcorr's predictions here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, metavar="FILE.json",
                        help="per sequence: counts by kind, per frame, the first real deviations, the tolerance")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from vcorr.evaluation.fidelity import compare_with_original, fidelity_table
    from vcorr.io import write_json
    from vcorr.propagation.fidelity import Tolerance

    tolerance = Tolerance()
    results = compare_with_original(
        args.benchmark, args.data_root, args.method_config, args.original, sequences=args.sequences,
        weights_root=args.weights_root, overrides=args.overrides, device=args.device, tolerance=tolerance,
        predictions=args.predictions,
    )  # fmt: skip
    print(fidelity_table(results, tolerance))
    if args.out:
        write_json(args.out, {"tolerance": dataclasses.asdict(tolerance),
                              "sequences": [result.as_dict(tolerance) for result in results]})
    return 0 if all(result.faithful(tolerance) for result in results) else 1
