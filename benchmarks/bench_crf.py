"""Kept so that old commands still work: the same as ``cmfnet bench crf`` (cmfnet/bench/crf.py;
options and the CSV it writes: docs/benchmarks.md)."""

import sys

from cmfnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "crf", *sys.argv[1:]]))
