"""Kept so that old commands still work: the same as ``cmfnet bench metrics`` (cmfnet/bench/metrics.py;
options and the CSV it writes: docs/benchmarks.md)."""

import sys

from cmfnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "metrics", *sys.argv[1:]]))
