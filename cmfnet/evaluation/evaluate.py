"""``cmfnet evaluate``: score a folder of predictions against the dataset's labels, per case and class.

One CSV row per case and class with DSC, ASD, ASSD, HD95 (:mod:`cmfnet.evaluation.metrics`), the
empty-mask case that applied, and the provenance columns the workflow adds (seed, config hash,
versions). Only the fold's test cases are scored with ``--fold``; labels are read here and nowhere
in training.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmfnet import __version__
from cmfnet.data.dataset import Dataset
from cmfnet.data.io import FILE_ENDING, GRID_TOLERANCE, atomic_path, read_image
from cmfnet.errors import InputError
from cmfnet.evaluation.metrics import METRIC_COLUMNS, VERSION_COLUMNS, both_empty_row, evaluate_case, image_diagonal_mm


def _label_values(array: np.ndarray, path: Path) -> tuple[np.ndarray, set[int]]:
    """The label map as a non-negative integer array, and the values it holds."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(path, "label map has non-integer values")
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise InputError(path, f"label map has negative values (min {array.min()})")
    counts = np.bincount(array.ravel()) if array.size else np.zeros(0, int)
    return array, {int(v) for v in np.flatnonzero(counts)}


def _check_declared(values: set[int], declared: set[int], path: Path, what: str) -> None:
    bad = sorted(values - declared - {0})
    if bad:
        raise InputError(path, f"label values {bad[:5]} outside the {what} {sorted(declared)}")


def _evaluate_pair(case: str, pred_path: Path, ref_path: Path,
                   class_names: dict[int, str] | None) -> dict[str, Any]:
    """Read, check and evaluate one case. Runs in worker processes, so errors come back as data
    (an InputError does not survive unpickling)."""
    try:
        pred, pred_grid = read_image(pred_path)
        ref, ref_grid = read_image(ref_path)
        if pred_grid.shape != ref_grid.shape or not np.allclose(
                pred_grid.spacing, ref_grid.spacing, atol=GRID_TOLERANCE):
            raise InputError(pred_path, f"grid {pred_grid.shape} @ {pred_grid.spacing} mm differs "
                                        f"from reference {ref_path} "
                                        f"({ref_grid.shape} @ {ref_grid.spacing} mm)")
        pred, pred_values = _label_values(pred, pred_path)
        ref, ref_values = _label_values(ref, ref_path)
        if class_names is not None:
            declared = set(class_names) - {0}
            _check_declared(ref_values, declared, ref_path, "declared classes")
            _check_declared(pred_values, declared, pred_path, "declared classes")
            classes = class_names
        else:
            classes = {k: _default_class_name(k) for k in (pred_values | ref_values) - {0}}
        rows = evaluate_case(pred, ref, ref_grid.spacing, classes)
    except InputError as err:
        return {"error": (err.path, err.problem)}
    for row in rows:
        row["case"] = case
    return {"rows": rows, "pred_values": pred_values, "ref_values": ref_values,
            "penalty_mm": image_diagonal_mm(ref_grid.shape, ref_grid.spacing)}


def _default_class_name(class_id: int) -> str:
    return f"label_{class_id}"


def _prediction_cases(pred_dir: Path) -> list[str]:
    names = sorted(p.name for p in pred_dir.iterdir()
                   if p.name.endswith(FILE_ENDING) and not p.name.startswith("."))
    return [name[: -len(FILE_ENDING)] for name in names]


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike,
                     class_names: dict[int, str] | None = None, cases: list[str] | None = None,
                     jobs: int = 1) -> pd.DataFrame:
    """Evaluate every ``{case}.nii.gz`` of ``pred_dir`` against the same name in ``ref_dir``.

    Without ``class_names``, the classes are the labels found in the references (over all
    cases), so that every case gets the same rows and a class a case lacks counts as both-empty.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, role in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise InputError(folder, f"{role} folder not found")
    if jobs < 1:
        raise InputError(pred_dir, f"jobs must be >= 1, got {jobs}")
    if cases is None:
        cases = _prediction_cases(pred_dir)
        if not cases:
            raise InputError(pred_dir, f"no *{FILE_ENDING} predictions found")
    if class_names is not None:
        class_names = {int(k): str(v) for k, v in class_names.items() if int(k) != 0}
    pairs = [(case, pred_dir / f"{case}{FILE_ENDING}", ref_dir / f"{case}{FILE_ENDING}")
             for case in cases]
    # check every file exists before spending time on any case
    for _, pred_path, ref_path in pairs:
        for path, role in ((pred_path, "prediction"), (ref_path, "reference")):
            if not path.is_file():
                raise InputError(path, f"{role} file not found")

    args = [(case, p, r, class_names) for case, p, r in pairs]
    if jobs == 1 or len(pairs) == 1:
        results = [_evaluate_pair(*a) for a in args]
    else:
        # spawn: the caller may hold torch/OpenMP threads that a fork would copy in a bad state
        with ProcessPoolExecutor(max_workers=min(jobs, len(pairs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_evaluate_pair, *zip(*args)))
    for result in results:
        if "error" in result:
            raise InputError(*result["error"])

    if class_names is None:
        results = _complete_inferred_classes(pairs, results)
    rows = [row for result in results for row in result["rows"]]
    return pd.DataFrame(rows, columns=["case", *METRIC_COLUMNS])


def _complete_inferred_classes(pairs: list[tuple[str, Path, Path]],
                               results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With classes inferred from the references: reject predicted labels no reference has, and
    give every case a both-empty row for each class it lacks on both sides."""
    declared = set().union(*(r["ref_values"] for r in results)) - {0}
    for (_, pred_path, _), result in zip(pairs, results):
        _check_declared(result["pred_values"], declared, pred_path, "labels of the references")
    for (case, _, _), result in zip(pairs, results):
        present = {row["class_id"] for row in result["rows"]}
        missing = [{"case": case, **both_empty_row(k, _default_class_name(k), result["penalty_mm"])}
                   for k in sorted(declared - present)]
        result["rows"] = sorted(result["rows"] + missing, key=lambda row: row["class_id"])
    return results


# -- CLI -----------------------------------------------------------------------------------------
def _parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got '{text}'")
    return key.strip(), value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="per-case, per-class DSC / ASD / ASSD / HD95 of predictions, as CSV",
        description="Compare every {case}.nii.gz of --pred with the same file of the reference "
                    "folder and write one CSV row per case and foreground class.")
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps")
    parser.add_argument("--ref", type=Path,
                        help="folder of reference label maps (default: DATASET/labelsTr)")
    parser.add_argument("--out", required=True, type=Path, help="CSV file to write")
    parser.add_argument("--dataset", type=Path,
                        help="dataset folder: class names from its dataset.json")
    parser.add_argument("--fold", type=int,
                        help="with --dataset: evaluate exactly this fold's test cases (other "
                             "predictions in --pred are left out, a missing one is an error)")
    parser.add_argument("--tag", action="append", default=[], type=_parse_tag, metavar="KEY=VALUE",
                        help="constant column added to every row (e.g. method=pce); repeatable")
    parser.add_argument("--jobs", type=int, default=1, help="cases evaluated in parallel")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    class_names = None
    ref_dir = args.ref
    cases = None
    if args.fold is not None and args.dataset is None:
        raise InputError("--fold", "needs --dataset (the fold's test cases come from its splits)")
    if args.dataset is not None:
        dataset = Dataset(args.dataset)
        class_names = dataset.class_names
        ref_dir = ref_dir if ref_dir is not None else dataset.root / "labelsTr"
        if args.fold is not None:
            cases = sorted(dataset.split(args.fold)["test"])
            extra = sorted(set(_prediction_cases(args.pred)) - set(cases)) if args.pred.is_dir() else []
            if extra:
                print(f"evaluate: leaving out {len(extra)} prediction(s) of cases outside fold "
                      f"{args.fold}'s test set: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    if ref_dir is None:
        raise InputError("--ref", "give a reference folder with --ref, or a dataset with --dataset")
    tags = dict(args.tag)
    reserved = {"case", *METRIC_COLUMNS, *VERSION_COLUMNS}
    clashes = sorted(k for k in tags if k in reserved)
    if len(tags) != len(args.tag) or clashes:
        raise InputError("--tag", f"tag keys must be unique and not a metric column (got "
                                  f"{[k for k, _ in args.tag]})")

    table = evaluate_folders(args.pred, ref_dir, class_names=class_names, cases=cases, jobs=args.jobs)
    for position, (key, value) in enumerate(tags.items()):
        table.insert(position, key, value)
    table["cmfnet_version"] = __version__
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)

    mean_dsc = table.groupby(["class_id", "class"], sort=True)["dsc"].mean()
    per_class = ", ".join(f"{name} {value:.4f}" for (_, name), value in mean_dsc.items())
    print(f"evaluate: {table['case'].nunique()} cases -> {args.out}; mean DSC: {per_class}")
    return 0
