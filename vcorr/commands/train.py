"""`vcorr train`: train a method on an image/frame index and export its encoder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    from vcorr.train import METHODS

    parser = subparsers.add_parser(
        "train",
        help="train a method (HVC, MoCo, Spa-then-Temp), resuming from the work dir",
        description=(
            "Train a method on the images of a `vcorr data index` table and export the encoder to --out "
            "once training completes. Rerunning the same command resumes from the work dir's checkpoint. "
            "SIGTERM or SIGUSR1 checkpoints at the next step and exits with 128 + the signal number "
            "(143, 138). Under `torchrun --nproc-per-node N` the same command trains with DDP "
            "(the config's batch_size is the global batch); only rank 0 writes."
        ),
    )
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--config", required=True, type=Path, metavar="FILE",
                        help="training config YAML (config/train/<name>.yaml)")
    parser.add_argument("--data", required=True, type=Path, metavar="INDEX.csv", help="index from `vcorr data index`")
    parser.add_argument("--workdir", required=True, type=Path, metavar="DIR",
                        help="checkpoint, resolved config, metrics.csv and TensorBoard logs (kept across reruns)")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="exported encoder (written at the end, atomically)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (YAML value), e.g. --set epochs=2 --set amp=bf16; repeatable")
    parser.add_argument("--restart", action="store_true",
                        help="discard the work dir's checkpoint of this method and train from scratch")
    parser.add_argument("--init-out", type=Path, metavar="FILE",
                        help="also export the untrained initialisation (same architecture, seed and starting "
                             "weights, no step) in the --out format: the baseline a trained model is compared with")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vcorr.train import load_config
    from vcorr.train.loop import TrainingInterrupted, train

    config = load_config(args.method, args.config, args.overrides)
    validate = None
    if config.eval_every:
        from vcorr.evaluation.validation import Validator

        # Built here, above both layers: training only calls it (vcorr.train.loop, Validate).
        validate = Validator(config.eval_benchmark, config.eval_method, config.eval_data_root,
                             args.workdir / "validation", sequences=config.eval_sequences,
                             weights_root=config.eval_weights_root)
    try:
        summary = train(args.method, config, args.data, args.workdir, args.out, device=args.device, restart=args.restart,
                        validate=validate, init_out=args.init_out)
    except TrainingInterrupted as stop:
        print(f"vcorr train: {stop}", file=sys.stderr)
        return stop.exit_code
    if summary["main"]:  # rank 0 reports for all
        terms = ", ".join(f"{key} {value:.4g}" for key, value in summary["terms"].items())
        resumed = f", resumed at step {summary['resumed_from']}" if summary["resumed_from"] is not None else ""
        validation = summary["validation"]
        best = (f"; best validation {validate.metric} {validation['best']['score']:.4g} at step "
                f"{validation['best']['step']}" if validation and validation["best"] else "")
        print(f"{args.method}: {summary['steps']} steps ({summary['epochs']:.2f} epochs{resumed}) in "
              f"{summary['seconds']:.1f} s, {summary['images_per_s']:.1f} images/s; {terms}{best}; exported "
              f"{args.out} ({config.select})")
    return 0
