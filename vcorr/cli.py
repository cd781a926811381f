"""`vcorr` command line: one sub-command per module in `vcorr.commands`.

Each command module defines `add_parser(subparsers)`, which registers its parser and sets
`func(args) -> int | None`. Modules import heavy libraries (torch) inside their functions so
that `vcorr --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from vcorr import __version__
from vcorr.errors import VcorrError
import vcorr.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vcorr",
        description="Self-supervised video correspondence: data, training, label propagation, scoring.",
    )
    parser.add_argument("--version", action="version", version=f"vcorr {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module_info in sorted(pkgutil.iter_modules(vcorr.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"vcorr.commands.{module_info.name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VcorrError as error:
        print(f"vcorr {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vcorr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
