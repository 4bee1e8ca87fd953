"""Kept so that old commands still work: the same as ``cmfnet bench inference`` (cmfnet/bench/inference.py;
options and the CSV it writes: docs/benchmarks.md)."""

import sys

from cmfnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "inference", *sys.argv[1:]]))
