"""``cmfnet bench {metrics,crf,training,inference,all}``: run a benchmark, write its CSV.

Each writes ``OUT/PREFIXNAME.csv`` (default ``results/benchmarks/NAME.csv``); every row names the
machine, the library versions and the commit. A library of the ``bench`` extra that is missing is
reported before anything runs (one line, exit 2), so ``all`` never fails after an hour's work.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from cmfnet.bench import crf, inference, metrics, training
from cmfnet.bench.common import DEFAULT_OUT, REPO, require, write_csv
from cmfnet.evaluation.metrics import NSD_TOLERANCE_MM

Rows = list[dict[str, object]]


def _default_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _metrics(args: argparse.Namespace) -> Rows:
    return metrics.benchmark(args.cases, tuple(args.shape), tuple(args.spacing), args.libraries, args.nsd_tolerance)


def _crf(args: argparse.Namespace) -> Rows:
    downsamples = [tuple(f) for f in args.downsample or [[1, 2, 2]]]
    return crf.benchmark(args.devices, args.batch, tuple(args.patch), downsamples, args.classes, args.radius,
                         args.threads, args.implementations)


def _training(args: argparse.Namespace) -> Rows:
    return training.benchmark(args.methods, args.settings, args.iterations, args.warmup, args.device, args.threads,
                              args.methods_dir)


def _inference(args: argparse.Namespace) -> Rows:
    return inference.benchmark(args.methods, tuple(args.shape), tuple(args.patch), args.batch, args.overlap,
                               args.device, args.threads, args.methods_dir)


def _all(args: argparse.Namespace) -> dict[str, Rows]:
    for library in metrics.LIBRARIES.values():  # all of the extra, before an hour's work
        require(library.module, library.distribution)
    require("unfoldNd", "unfoldNd")
    devices = _default_devices() if args.device == "auto" else [args.device]
    return {
        "metrics": metrics.benchmark(),
        "crf": crf.benchmark(devices, [crf.PAPER_BATCH], crf.PAPER_PATCH, [(1, 2, 2)], threads=args.threads),
        "training": training.benchmark(device=args.device, threads=args.threads, methods_dir=args.methods_dir),
        "inference": inference.benchmark(device=args.device, threads=args.threads, methods_dir=args.methods_dir),
    }


def run(args: argparse.Namespace) -> int:
    tables = _all(args) if args.benchmark == "all" else {args.benchmark: args.bench_func(args)}
    for name, rows in tables.items():
        write_csv(rows, args.out / f"{args.prefix}{name}.csv")
    return 0


def _subparser(benchmarks: argparse._SubParsersAction, name: str, help_text: str,
               func: Callable[[argparse.Namespace], Rows] | None) -> argparse.ArgumentParser:
    parser = benchmarks.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder of the CSVs (default: {DEFAULT_OUT})")
    parser.add_argument("--prefix", default="", help="prefix of the CSV names (gpu_check.sh: gpu_)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run, bench_func=func)
    return parser


def _methods_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods-dir", type=Path, default=REPO / "methods", help="folder of the method cards")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: metrics, CRF, training, inference (docs/benchmarks.md)",
                                   description="Run a benchmark and write its CSV, every row naming the machine, "
                                               "the library versions and the commit (docs/benchmarks.md).")
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    sub = _subparser(benchmarks, "metrics", "our metrics against medpy, MONAI and DeepMind's surface-distance",
                     _metrics)
    sub.add_argument("--cases", type=int, default=metrics.CASES, help="synthetic cases; the last adds a large organ")
    sub.add_argument("--shape", type=int, nargs=3, default=list(metrics.SHAPE), metavar=("Z", "Y", "X"))
    sub.add_argument("--spacing", type=float, nargs=3, default=list(metrics.SPACING), metavar=("Z", "Y", "X"))
    sub.add_argument("--nsd-tolerance", type=float, default=NSD_TOLERANCE_MM, help="NSD tolerance, mm")
    sub.add_argument("--libraries", nargs="+", choices=list(metrics.LIBRARIES), default=list(metrics.LIBRARIES))

    sub = _subparser(benchmarks, "crf", "our multi-view gated CRF against the unfold-based reference", _crf)
    sub.add_argument("--devices", nargs="+", default=_default_devices())
    sub.add_argument("--batch", type=int, nargs="+", default=[crf.PAPER_BATCH],
                     help=f"batch sizes (default: the paper's {crf.PAPER_BATCH}, where the unfold reference "
                          "stays under 8 GiB on CPU; smaller ones for smaller machines)")
    sub.add_argument("--patch", type=int, nargs=3, default=list(crf.PAPER_PATCH), metavar=("Z", "Y", "X"))
    sub.add_argument("--downsample", type=int, nargs=3, action="append", metavar=("Z", "Y", "X"),
                     help="CRF grid factors; repeat to compare (default: 1 2 2, the plugin's)")
    sub.add_argument("--classes", type=int, default=2)
    sub.add_argument("--radius", type=int, default=5)
    sub.add_argument("--implementations", nargs="+", choices=crf.IMPLEMENTATIONS, default=list(crf.IMPLEMENTATIONS))

    sub = _subparser(benchmarks, "training", "seconds per iteration and peak memory of each method", _training)
    sub.add_argument("--methods", nargs="+", default=list(training.TABLE1))
    sub.add_argument("--settings", nargs="+", choices=list(training.SETTINGS), default=list(training.DEFAULT_SETTINGS))
    sub.add_argument("--iterations", type=int, default=3, help="timed iterations (after the warm-up)")
    sub.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    sub.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    _methods_dir(sub)

    sub = _subparser(benchmarks, "inference", "time and peak memory of sliding-window inference of a volume",
                     _inference)
    sub.add_argument("--methods", nargs="+", default=list(inference.METHODS))
    sub.add_argument("--shape", type=int, nargs=3, default=list(inference.FULL_CT), metavar=("Z", "Y", "X"))
    sub.add_argument("--patch", type=int, nargs=3, default=[16, 96, 96], metavar=("Z", "Y", "X"))
    sub.add_argument("--batch", type=int, default=16, help="windows per forward pass")
    sub.add_argument("--overlap", type=float, default=0.5)
    sub.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    _methods_dir(sub)

    sub = _subparser(benchmarks, "all", "every benchmark at its defaults, one CSV each", None)
    sub.add_argument("--device", default="auto", help="auto: CPU and CUDA (when present) for the CRF, "
                                                      "CUDA when present for training and inference")
    _methods_dir(sub)
