"""Learning curves and the convergence verdict: does a table's number come from a trained model?

Reads the given ``train_log.csv`` files, or every one under a models folder (``<method>/seed<s>/fold<f>/train_log.csv``,
as ``cmfnet train`` writes them) and writes

- ``curves.png``: per method, the validation Dice of every fold and seed (thin) and their mean
  (thick) against the iteration, and below it every logged loss term (mean over folds and seeds);
- ``convergence.csv`` / ``convergence.md``: per method, and per fold and seed, the verdict.

The rule (docs/protocol.md): a method's curve is its validation Dice averaged over folds and seeds
at each validated iteration. It has *converged* when, over the last quarter of training, the
least-squares line through that curve changes the Dice by less than ``tolerance`` (absolute, 0.05
by default). The line, not the max - min range, is judged: with a handful of validation cases each
point is noisy, and the range measures that noise (reported as ``last_quarter_range``) rather
than a trend. Like ``cmfnet tables`` this reads CSVs only: no torch, no retraining.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cmfnet.data.io import atomic_path  # noqa: E402
from cmfnet.errors import InputError  # noqa: E402
from cmfnet.training.row_ids import training_id  # noqa: E402

NOT_LOSSES = {"iteration", "lr", "sec_per_it", "val_dice", "val_seconds", "method", "seed", "fold"}


def log_files(models: Path) -> list[Path]:
    files = sorted(models.glob("*/seed*/fold*/train_log.csv"))
    if not files:
        raise InputError(models, "no <method>/seed<s>/fold<f>/train_log.csv under this folder "
                                 "(give --models the folder of one dataset, e.g. results/models/synth-npc)")
    return files


def collect_logs(files: list[Path]) -> pd.DataFrame:
    """The training logs, tagged with method, seed and fold from their paths."""
    frames = []
    for path in files:
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise InputError(path, f"cannot read training log ({type(err).__name__})") from None
        if "iteration" not in frame.columns:
            raise InputError(path, "no 'iteration' column: not a training log")
        fold, seed, method = path.parent.name, path.parent.parent.name, path.parent.parent.parent.name
        if not (fold.startswith("fold") and fold[4:].isdigit() and seed.startswith("seed") and seed[4:].isdigit()):
            raise InputError(path, "not under <method>/seed<s>/fold<f>/, so its method, seed and fold are unknown")
        frames.append(frame.assign(method=method, seed=int(seed[len("seed"):]), fold=int(fold[len("fold"):])))
    return pd.concat(frames, ignore_index=True)


def last_quarter_trend(iterations: np.ndarray, dice: np.ndarray, total: int) -> tuple[float, float, int]:
    """(change of the fitted line over the last quarter, max - min there, points used)."""
    start = 0.75 * total
    keep = iterations >= start
    if keep.sum() < 2:
        return float("nan"), float("nan"), int(keep.sum())
    slope = np.polyfit(iterations[keep].astype(float), dice[keep], 1)[0]
    return float(slope * (total - start)), float(np.ptp(dice[keep])), int(keep.sum())


def verdicts(logs: pd.DataFrame, tolerance: float, order: list[str] | None = None) -> pd.DataFrame:
    """One row per method (scope ``mean``, the rule) and per method x seed x fold (for inspection)."""
    val = logs.dropna(subset=["val_dice"]) if "val_dice" in logs else logs.iloc[0:0]
    rows = []
    for method in _ordered(logs["method"], order):
        mine = val[val["method"] == method]
        total = int(logs.loc[logs["method"] == method, "iteration"].max())
        curves = [("mean", "", "", mine.groupby("iteration")["val_dice"].mean())]
        curves += [("run", seed, fold, run.set_index("iteration")["val_dice"])
                   for (seed, fold), run in mine.groupby(["seed", "fold"])]
        for scope, seed, fold, curve in curves:
            change, spread, points = last_quarter_trend(curve.index.to_numpy(), curve.to_numpy(), total)
            rows.append({"method": method, "scope": scope, "seed": seed, "fold": fold, "iterations": total,
                         "last_quarter_points": points, "last_quarter_change": change,
                         "last_quarter_range": spread, "final_val_dice": curve.iloc[-1] if len(curve) else np.nan,
                         "tolerance": tolerance,
                         "converged": bool(points >= 2 and abs(change) < tolerance)})
    return pd.DataFrame(rows)


def _ordered(methods: pd.Series, order: list[str] | None) -> list[str]:
    """The logs' methods (training ids) in the order of ``order``, whose table rows may be heads
    of one trained model: a head stands for its model."""
    present = list(dict.fromkeys(sorted(methods)))
    trained = list(dict.fromkeys(training_id(m) for m in order or []))
    return [m for m in trained if m in present] + [m for m in present if m not in trained]


def to_markdown(table: pd.DataFrame) -> str:
    mean = table[table["scope"] == "mean"]
    runs = table[table["scope"] == "run"]
    tolerance = float(table["tolerance"].iloc[0])
    lines = ["### Convergence", "",
             f"Rule: the method's validation Dice, averaged over folds and seeds, changes by less than "
             f"{tolerance:g} along the least-squares line through the last quarter of training.", "",
             "| method | iterations | points | change | range | final val Dice | converged | runs converged |",
             "|---|---|---|---|---|---|---|---|"]
    for _, row in mean.iterrows():
        own = runs[runs["method"] == row["method"]]
        lines.append(f"| {row['method']} | {row['iterations']} | {row['last_quarter_points']} | "
                     f"{row['last_quarter_change']:+.3f} | {row['last_quarter_range']:.3f} | "
                     f"{row['final_val_dice']:.3f} | {'yes' if row['converged'] else '**no**'} | "
                     f"{int(own['converged'].sum())}/{len(own)} |")
    return "\n".join(lines) + "\n"


def plot_curves(logs: pd.DataFrame, path: Path, order: list[str] | None = None) -> None:
    methods = _ordered(logs["method"], order)
    fig, axes = plt.subplots(2, len(methods), figsize=(2.6 * len(methods), 4.8), squeeze=False, sharex="col")
    for column, method in enumerate(methods):
        mine = logs[logs["method"] == method]
        top, bottom = axes[0][column], axes[1][column]
        if "val_dice" in mine:
            val = mine.dropna(subset=["val_dice"])
            for _, run in val.groupby(["seed", "fold"]):
                top.plot(run["iteration"], run["val_dice"], color="tab:blue", alpha=0.3, lw=0.8)
            mean = val.groupby("iteration")["val_dice"].mean()
            top.plot(mean.index, mean.to_numpy(), color="tab:blue", lw=2)
            top.axvspan(0.75 * mine["iteration"].max(), mine["iteration"].max(), color="0.9")
        top.set_title(method, fontsize=9)
        top.set_ylim(0, 1)
        losses = [c for c in mine.columns if c not in NOT_LOSSES and mine[c].notna().any()]
        for name in losses:
            series = mine.dropna(subset=[name]).groupby("iteration")[name].mean()
            bottom.plot(series.index, series.to_numpy(), lw=1, label=name)
        bottom.set_xlabel("iteration", fontsize=8)
        if losses:
            bottom.legend(fontsize=6)
    axes[0][0].set_ylabel("validation Dice")
    axes[1][0].set_ylabel("training loss terms")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_curves(files: list[Path], out_table: Path, out_figure: Path, tolerance: float = 0.05,
                 order: list[str] | None = None) -> pd.DataFrame:
    logs = collect_logs(files)
    table = verdicts(logs, tolerance, order)
    out_table.parent.mkdir(parents=True, exist_ok=True)
    out_figure.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_table.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(out_table.with_suffix(".md")) as tmp:
        tmp.write_text(to_markdown(table))
    plot_curves(logs, out_figure, order)
    return table


def run(args: argparse.Namespace) -> int:
    if not 0 < args.tolerance < 1:
        raise InputError("--tolerance", f"{args.tolerance}: must be in (0, 1)")
    if bool(args.models) == bool(args.logs):
        raise InputError("--models", "give either --models DIR or --logs FILE ...")
    order = args.order.split(",") if args.order else None
    files = args.logs or log_files(args.models)
    table = write_curves(files, args.out_table, args.out_figure, args.tolerance, order)
    print(to_markdown(table))
    print(f"wrote {args.out_table.with_suffix('.csv')}, {args.out_table.with_suffix('.md')}, {args.out_figure}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "curves", help="plot learning curves and judge convergence from the training logs (no retraining)",
        description="Read MODELS/<method>/seed<s>/fold<f>/train_log.csv and write the learning-curve "
                    "figure and the convergence verdict per method (rule in docs/protocol.md).")
    parser.add_argument("--models", type=Path, help="one dataset's models, e.g. results/models/synth-npc")
    parser.add_argument("--logs", type=Path, nargs="+", help="or: exactly these train_log.csv files")
    parser.add_argument("--out-table", type=Path, required=True,
                        help="verdict table path without suffix; .csv and .md are written")
    parser.add_argument("--out-figure", type=Path, required=True, help="PNG of the curves")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="largest change of validation Dice over the last quarter that counts as converged")
    parser.add_argument("--order", help="comma-separated method ids: the column order")
    parser.set_defaults(func=run)
