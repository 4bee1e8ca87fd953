"""The ``cmfnet`` command. Every pipeline step is one subcommand a user can also run by hand.

Each module that owns a subcommand exposes ``add_parser(subparsers)``, which registers the command
and sets ``func`` (``args -> exit code``). Bad input raises :class:`cmfnet.errors.InputError`,
which is printed here as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cmfnet import __version__
from cmfnet.errors import InputError

# module that owns each subcommand, in the order the pipeline uses them
COMMAND_MODULES = (
    "cmfnet.synth",
    "cmfnet.scribbles",
    "cmfnet.importers",
    "cmfnet.validate",
    "cmfnet.engine",
    "cmfnet.inference",
    "cmfnet.metrics",
    "cmfnet.tables",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmfnet", description="Benchmark suite for scribble-supervised 3D cross-modal segmentation.")
    parser.add_argument("--version", action="version", version=f"cmfnet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"cmfnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cmfnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
