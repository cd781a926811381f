"""`vcorr propagate`: arguments for `vcorr.evaluation.pipeline.propagate_benchmark`."""

from __future__ import annotations

import argparse
from pathlib import Path

SHARD_HELP = "i/n: propagate only sequences i, i+n, i+2n, ... of the benchmark list (0 <= i < n)"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "propagate",
        help="propagate first-frame labels through a benchmark with a method's encoder(s)",
        description="A benchmark folder -> per-frame predictions in the formats the scorers read.",
    )
    parser.add_argument("--benchmark", required=True, help="a benchmark of config/benchmarks.yaml (davis17, jhmdb, vip, ...)")
    parser.add_argument("--data-root", required=True, type=Path, metavar="DIR",
                        help="dataset root as the official tools take it (for DAVIS the folder holding JPEGImages/)")
    parser.add_argument("--method-config", required=True, metavar="NAME-or-FILE",
                        help="a method of config/methods.yaml, or a YAML file with one method's keys")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="predictions folder: <sequence>/<frame>.png (JHMDB <action>/<clip>.npy) and the run "
                             "record .vcorr-propagate*.json; complete sequences of an identical earlier run are kept")
    parser.add_argument("--sequences", nargs="+", metavar="NAME", help="only these sequences")
    parser.add_argument("--shard", metavar="i/n", help=SHARD_HELP)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="float16 autocast for the encoders on CUDA (off by default)")
    parser.add_argument("--weights-root", type=Path, default=Path("resources/data"), metavar="DIR",
                        help="registry weights are read as <weights-root>/<id>/<file> (default: resources/data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a protocol parameter, the size, or a method option (zero_image_bn_update) "
                        "for this run (YAML value), repeatable")
    parser.add_argument("--force", action="store_true",
                        help="when --out holds predictions made otherwise (method, settings, weights, vcorr version or "
                             "code), delete them and propagate every selected sequence anew instead of refusing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vcorr.evaluation.pipeline import parse_shard, propagate_benchmark

    propagate_benchmark(
        args.benchmark, args.data_root, args.method_config, args.out,
        sequences=args.sequences, shard=parse_shard(args.shard), device=args.device, amp=args.amp,
        weights_root=args.weights_root, overrides=args.overrides, force=args.force,
    )  # fmt: skip
    return 0
