"""Kept so that old commands still work: the same as ``cmfnet bench training`` (cmfnet/bench/training.py;
options and the CSV it writes: docs/benchmarks.md)."""

import sys

from cmfnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "training", *sys.argv[1:]]))
