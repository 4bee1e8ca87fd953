"""``cmfnet qualitative``: the paper's qualitative figures (Fig. 3-5) from stored predictions.

Which cases, by a stated rule, so that nobody picks the flattering ones: the reference method's
(CmFNet by default) worst, median and best test case by DSC, averaged over the classes and
training seeds of its metrics rows. Which slice: the axial slice with the most ground-truth
foreground of that case. Each row is a case; its columns are every input channel, the ground
truth, and one panel per method: the method's labels as a coloured overlay, the ground truth as a
white contour, on the last input channel (MR for the paired data). A class keeps its colour in
every panel. Like ``cmfnet tables`` it reads stored files only: no torch, no retraining.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from cmfnet.data.dataset import Dataset  # noqa: E402
from cmfnet.data.io import FILE_ENDING, atomic_path, read_image  # noqa: E402
from cmfnet.errors import InputError  # noqa: E402
from cmfnet.evaluation.tables import chosen_metric_files, collect  # noqa: E402


def chosen_cases(metrics: pd.DataFrame, reference: str) -> list[tuple[str, str, int, float]]:
    """(role, case, fold, DSC) of the reference method's worst, median and best test case.

    The median is the lower middle case for an even count; with fewer than three cases each case
    appears once."""
    mine = metrics[metrics["method"] == reference]
    if mine.empty:
        raise InputError("--reference", f"no metrics rows for {reference!r} (known: "
                                        f"{', '.join(sorted(metrics['method'].unique()))})")
    per_case = mine.groupby(["case", "fold"])["dsc"].mean().reset_index()
    per_case = per_case.sort_values(["dsc", "case"], kind="stable").reset_index(drop=True)
    picks = {"worst": 0, "median": (len(per_case) - 1) // 2, "best": len(per_case) - 1}
    chosen, seen = [], set()
    for role, index in picks.items():
        row = per_case.iloc[index]
        if row["case"] not in seen:
            seen.add(row["case"])
            chosen.append((role, str(row["case"]), int(row["fold"]), float(row["dsc"])))
    return chosen


def densest_slice(label: np.ndarray) -> int:
    """The axial (z) index with the most foreground voxels; the middle slice of an empty label."""
    counts = (label > 0).reshape(label.shape[0], -1).sum(axis=1)
    return int(np.argmax(counts)) if counts.any() else label.shape[0] // 2


def _window(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [1, 99])
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1)


def plot_cases(dataset: Dataset, predictions: Path, methods: list[tuple[str, str]], seed: int,
               chosen: list[tuple[str, str, int, float]], reference: str, out: Path) -> None:
    """One row per chosen case: inputs, ground truth, and each method's overlay."""
    colours = ListedColormap(plt.get_cmap("tab10").colors[:max(dataset.num_classes - 1, 1)])
    columns = dataset.channels + ["ground truth"] + [name for _, name in methods]
    fig, axes = plt.subplots(len(chosen), len(columns), squeeze=False,
                             figsize=(1.9 * len(columns), 2.1 * len(chosen)))
    for row, (role, case, fold, dsc) in enumerate(chosen):
        image, geometry = dataset.load_image(case)
        label = dataset.load_label(case)
        z = densest_slice(label)
        aspect = geometry.spacing[1] / geometry.spacing[2]
        background = _window(image[-1, z])
        panels: list[tuple[np.ndarray, np.ndarray | None]] = [(_window(image[c, z]), None)
                                                               for c in range(dataset.num_channels)]
        panels.append((background, label[z]))
        for method, _ in methods:
            path = predictions / method / f"seed{seed}" / f"fold{fold}" / f"{case}{FILE_ENDING}"
            prediction, _ = read_image(path)
            if prediction.shape != label.shape:
                raise InputError(path, f"grid {prediction.shape} differs from the label's {label.shape}")
            panels.append((background, prediction[z]))
        for col, (shown, overlay) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(shown, cmap="gray", aspect=aspect, interpolation="nearest")
            if overlay is not None:
                ax.imshow(np.ma.masked_equal(overlay.astype(np.int16), 0) - 1, cmap=colours, vmin=0, vmax=colours.N - 1,
                          alpha=0.55, aspect=aspect, interpolation="nearest")
                if col > dataset.num_channels and label[z].any():
                    ax.contour(label[z] > 0, levels=[0.5], colors="white", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=8)
        axes[row, 0].set_ylabel(f"{case}, z={z}\n{role} {reference}\nDSC {100 * dsc:.1f} %", fontsize=7)
    fig.suptitle(f"{dataset.name}: overlays, ground truth in white; seed {seed}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def column_titles(metrics: pd.DataFrame) -> dict[str, str]:
    """Each method's column title: its display name, and where rows share a name (the ablations
    preset draws CmFNet on scribbles and on masks) its supervision, or failing that its id, so that
    no two columns read alike."""
    first = metrics.groupby("method", sort=False).first()
    names = first["method_name"].astype(str)
    ids = first.index.to_series().astype(str)
    tag = first["data"].astype(str) if "data" in first else ids
    titles = names.where(~names.duplicated(keep=False), names + " (" + tag + ")")
    return titles.where(~titles.duplicated(keep=False), names + " (" + ids + ")").to_dict()


def run(args: argparse.Namespace) -> int:
    metrics = collect(chosen_metric_files(args.results, args.metrics))
    names = column_titles(metrics)
    order = args.order.split(",") if args.order else list(names)
    methods = [(m, names[m]) for m in order if m in names]
    chosen = chosen_cases(metrics, args.reference)
    plot_cases(Dataset(args.dataset), args.predictions, methods, args.seed, chosen, args.reference, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{role} {case} ({100 * dsc:.1f} %)" for role, case, _, dsc in chosen))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "qualitative", help="figure of the reference method's worst, median and best test case, every method",
        description="Read per-case metrics to choose the cases (the reference method's worst, median and "
                    "best DSC), then each method's stored predictions, and draw one axial slice per case.")
    parser.add_argument("--dataset", type=Path, required=True, help="dataset folder (images and labels)")
    parser.add_argument("--predictions", type=Path, required=True,
                        help="one dataset's predictions: <method>/seed<s>/fold<f>/<case>.nii.gz under it")
    parser.add_argument("--results", type=Path, help="results folder: reads every CSV under its metrics/")
    parser.add_argument("--metrics", type=Path, nargs="+", help="or: exactly these metrics CSVs")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--order", help="comma-separated method ids: the column order (default: as found)")
    parser.add_argument("--reference", default="cmfnet", help="method whose DSC chooses the cases")
    parser.add_argument("--seed", type=int, default=0, help="which training seed's predictions to draw")
    parser.set_defaults(func=run)
