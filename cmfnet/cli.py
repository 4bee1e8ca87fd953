"""The ``cmfnet`` command. Every pipeline step is one subcommand a user can also run by hand.

Each module that owns a subcommand sits in the package of its stage (data, training, evaluation)
and exposes ``add_parser(subparsers)``, which registers the command with ``func=run``
(``run(args) -> exit code``). Bad input raises :class:`cmfnet.errors.InputError`,
which is printed here as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from types import FrameType

from cmfnet import __version__
from cmfnet.errors import InputError

# subcommand -> the module that owns it, in the order the pipeline uses them
COMMANDS = {
    "synth": "cmfnet.data.synth",
    "scribble": "cmfnet.data.scribbles",
    "import": "cmfnet.data.importers",
    "validate": "cmfnet.data.validate",
    "train": "cmfnet.training.train",
    "predict": "cmfnet.evaluation.predict",
    "evaluate": "cmfnet.evaluation.evaluate",
    "tables": "cmfnet.evaluation.tables",
    "curves": "cmfnet.evaluation.curves",
    "qualitative": "cmfnet.evaluation.qualitative",
    "bench": "cmfnet.bench.cli",  # not a pipeline step: the benchmarks of docs/benchmarks.md
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``only``) one subcommand's, so ``cmfnet synth`` need not import torch."""
    parser = argparse.ArgumentParser(
        prog="cmfnet", description="Benchmark suite for scribble-supervised 3D cross-modal segmentation.")
    parser.add_argument("--version", action="version", version=f"cmfnet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, module in COMMANDS.items():
        if only is None or command == only:
            importlib.import_module(module).add_parser(subparsers)
    return parser


class Terminated(Exception):
    """Raised on SIGTERM (Snakemake, SLURM, ``kill``) so that atomic writes remove their partial file."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv and argv[0] in COMMANDS else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"cmfnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cmfnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"cmfnet {args.command}: terminated (SIGTERM); partial files removed", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
