"""``cmfnet validate DIR``: check a dataset folder before anything trains on it.

Each problem is printed as one line naming the file; the exit code is 1 if there is any, 0 (and
a one-line summary) otherwise. What is checked:

- ``dataset.json``: channels, labels (background 0, consecutive ids), unique case ids, declared
  normalisation schemes;
- every channel of a case exists, is a complete readable 3D image, lies on channel 0's grid and
  holds no NaN/inf; labels and scribbles lie on that grid and hold only declared values
  (scribbles also 255 = unlabelled) and no scribble is empty;
- the splits cover every case exactly once (k-fold: every case tested once; fixed: every case in
  one part) and train/val/test are disjoint, except a fold marked ``val_from_train`` whose only
  non-test case serves as both (what ``--val-from-train`` makes for a 2-case dataset);
- scribbles exist only for cases in some fold's training list (a test or validation case of a
  fixed split has none), and every training case has one in each scribble variant;
- no stray files (leftover temporary files, cases not listed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cmfnet.errors import InputError
from cmfnet.data.io import FILE_ENDING, IGNORE, Geometry, counted, leftover_partials, read_image, read_json
from cmfnet.data.dataset import dataset_json_problems
from cmfnet.data.splits import VAL_FROM_TRAIN, check_splits

SCRIBBLE_REPORT = "coverage.json"  # what `cmfnet scribble` writes next to a variant's scribbles

def read_volume(path: Path, what: str) -> tuple[np.ndarray, Geometry]:
    """Read one 3D volume, refusing truncated or corrupt files (InputError naming ``path``)."""
    if path.is_dir():
        raise InputError(path, f"is a directory, not an image file ({what}); give one NIfTI file "
                               "(convert a DICOM series to NIfTI first)")
    if not path.is_file():
        raise InputError(path, f"missing {what}")
    array, geometry = read_image(path)
    if array.ndim != 3:
        raise InputError(path, f"expected a 3D {what}, found {array.ndim}D with shape {array.shape}")
    return array, geometry


def labelmap_problem(array: np.ndarray, allowed: set[int]) -> str | None:
    """Non-integer values or values outside ``allowed``, as a message."""
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
        return "non-integer values in a label map"
    values = np.unique(array)
    bad = [v.item() for v in values if v not in allowed]
    if bad:
        return f"values {bad[:6]} outside the declared classes {sorted(allowed)}"
    return None


def coverage(scribble: np.ndarray, class_names: dict[int, str]) -> dict[str, float]:
    """Percent of the image's voxels scribbled with each class (the paper's 'image coverage')."""
    counts = np.bincount(scribble.ravel(), minlength=IGNORE + 1)
    return {name: 100.0 * int(counts[class_id]) / scribble.size for class_id, name in class_names.items()}


def split_problems(cases: list[str], splits: list[dict[str, Any]],
                   groups: dict[str, str] | None = None) -> list[str]:
    """:func:`cmfnet.data.splits.check_splits`, plus what the importers add.

    A fold may mark ``val_from_train`` when its non-test part is a single case (or, with
    ``groups``, a single patient's cases), which then is both its training and its validation
    part: a 2-case dataset cannot have three disjoint parts. Anything else marked so, or any other
    overlap, is a problem. With ``groups`` (case -> patient), a patient's cases must never be
    split between a fold's test part and its train/val parts.
    """
    if not splits:
        return ["no splits defined (at least 2 cases are needed)"]
    groups = groups or {}
    problems, checked = [], []
    for k, split in enumerate(splits):
        if not isinstance(split, dict):
            return [f"fold {k}: not a {{train, val, test}} object"]
        split = dict(split)
        if split.pop(VAL_FROM_TRAIN, False):
            train, val = list(split.get("train", [])), list(split.get("val", []))
            one_unit = len({groups.get(c, c) for c in train}) == 1
            if train and sorted(val) == sorted(train) and one_unit:
                split["val"] = []
            else:
                problems.append(f"fold {k}: '{VAL_FROM_TRAIN}' is allowed only when the fold's single "
                                f"non-test case is both train and val (train={train[:3]}, val={val[:3]})")
        if groups:
            held_out = {groups.get(c, c) for c in split.get("test", [])}
            mixed = sorted(c for part in ("train", "val") for c in split.get(part, [])
                           if groups.get(c, c) in held_out)
            if mixed:
                problems.append(f"fold {k}: cases {mixed[:5]} share a patient with test cases")
        checked.append(split)
    return problems + check_splits(cases, checked)


class _Checker:
    """Collects ``path: problem`` lines for one dataset folder."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: Path, problem: str) -> None:
        self.problems.append(f"{path}: {problem}")

    def volume(self, path: Path, what: str) -> tuple[np.ndarray, Geometry] | None:
        try:
            return read_volume(path, what)
        except InputError as err:
            self.add(path, err.problem)
            return None

    def labelmap(self, path: Path, what: str, grid: Geometry | None, allowed: set[int],
                 unlabelled: int | None) -> np.ndarray | None:
        """The label map's problems, recorded; the array itself when it could be read."""
        loaded = self.volume(path, what)
        if loaded is None:
            return None
        array, geometry = loaded
        if grid is not None and not geometry.same_grid(grid):
            self.add(path, f"grid {geometry.shape} @ {geometry.spacing} mm differs from the images "
                           f"({grid.shape} @ {grid.spacing} mm)")
        problem = labelmap_problem(array, allowed)
        if problem:
            self.add(path, problem)
        elif unlabelled is not None and np.all(array == unlabelled):
            self.add(path, "scribble is empty (no labelled voxel)")
        return array


def _stray_files(folder: Path, expected: set[str]) -> Iterator[Path]:
    """Unexpected entries of ``folder``, except partial files (reported as such)."""
    partial = set(leftover_partials(folder))
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name not in expected and path not in partial:
                yield path


def _partial_problem(path: Path) -> str:
    kind = "folder" if path.is_dir() else "file"
    return (f"partial {kind} left by a killed write (SIGKILL, power loss): not part of the dataset; "
            "delete it (rerunning the command that wrote it also removes it)")


def leftovers_beside(root: Path) -> list[str]:
    """Warnings for what a killed write of ``root`` itself left beside it (``.NAME.*.part``,
    ``.NAME.old``): they do not affect the dataset, but take space and confuse."""
    return [f"{path}: {_partial_problem(path)}" for path in leftover_partials(root.parent, root.name)]


def validate_dataset(root: Path) -> tuple[list[str], str]:
    """All problems of a dataset folder (``path: problem`` lines) and a one-line summary."""
    if not root.is_dir():
        leftovers = ", ".join(p.name for p in leftover_partials(root.parent, root.name))
        raise InputError(root, ("not a directory" if root.exists() else "no such folder")
                         + (f" (a killed write left {leftovers} beside it: rerun the command that makes it)"
                            if leftovers else ""))
    check = _Checker()
    meta_path = root / "dataset.json"
    try:
        meta = read_json(meta_path)
    except InputError as err:
        return [f"{meta_path}: {err.problem}"], ""
    meta_problems = dataset_json_problems(meta)
    for problem in meta_problems:
        check.add(meta_path, problem)
    if meta_problems:
        return check.problems, ""
    channels = [meta["channel_names"][str(i)] for i in range(len(meta["channel_names"]))]
    num_classes = len(meta["labels"])
    cases = list(dict.fromkeys(meta["cases"]))
    for problem in split_problems(cases, meta["splits"], meta.get("case_groups")):
        check.add(meta_path, problem)
    training = {c for split in meta["splits"] if isinstance(split, dict) for c in split.get("train", [])}

    grids: dict[str, Geometry] = {}
    for case in cases:
        grid = None
        for c, name in enumerate(channels):
            path = root / "imagesTr" / f"{case}_{c:04d}{FILE_ENDING}"
            loaded = check.volume(path, f"modality '{name}' of case {case}")
            if loaded is None:
                continue
            array, geometry = loaded
            if grid is None:
                grid = grids[case] = geometry
            elif not geometry.same_grid(grid):
                check.add(path, f"grid {geometry.shape} @ {geometry.spacing} mm differs from channel 0 "
                                f"({grid.shape} @ {grid.spacing} mm)")
            if not np.isfinite(array).all():
                check.add(path, "contains NaN or inf")
        check.labelmap(root / "labelsTr" / f"{case}{FILE_ENDING}", f"label of case {case}", grid,
                       set(range(num_classes)), None)

    scribble_root = root / "scribblesTr"
    partial_variants = set(leftover_partials(scribble_root))
    variants = sorted(p for p in scribble_root.iterdir() if p.is_dir() and p not in partial_variants) \
        if scribble_root.is_dir() else []
    for folder in [root, root / "imagesTr", root / "labelsTr", scribble_root, *variants]:
        for path in leftover_partials(folder):
            check.add(path, _partial_problem(path))
    scribble_counts = {}
    class_names = {int(v): k for k, v in meta["labels"].items()}
    coverages: dict[str, list[dict[str, float]]] = {}
    for folder in variants:
        present = set()
        for path in _stray_files(folder, {SCRIBBLE_REPORT}):
            case = path.name[:-len(FILE_ENDING)] if path.name.endswith(FILE_ENDING) else None
            if case not in cases:
                check.add(path, "not a scribble of a listed case")
                continue
            present.add(case)
            if case not in training:
                check.add(path, f"scribble of case {case}, which is in no fold's training list "
                                "(a test or validation case must have no scribble)")
            scribble = check.labelmap(path, f"scribble of case {case}", grids.get(case),
                                      set(range(num_classes)) | {IGNORE}, IGNORE)
            if scribble is not None:
                coverages.setdefault(folder.name, []).append(coverage(scribble, class_names))
        missing = sorted(training - present)
        if missing:
            check.add(folder, f"no scribble for training {'case' if len(missing) == 1 else 'cases'} {missing[:5]}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        scribble_counts[folder.name] = len(present)

    expected_images = {f"{c}_{i:04d}{FILE_ENDING}" for c in cases for i in range(len(channels))}
    for path in _stray_files(root / "imagesTr", expected_images):
        check.add(path, "stray file (not a channel of a listed case)")
    for path in _stray_files(root / "labelsTr", {f"{c}{FILE_ENDING}" for c in cases}):
        check.add(path, "stray file (not the label of a listed case)")
    for path in _stray_files(scribble_root, {v.name for v in variants}):
        check.add(path, "stray file (scribbles belong in scribblesTr/<variant>/)")

    median = [statistics.median(g.spacing[a] for g in grids.values()) for a in range(3)] if grids else []
    splits = meta["splits"]
    kind = f"{len(splits)}-fold" if len(splits) > 1 else "fixed train/val/test"
    label_names = sorted(meta["labels"], key=meta["labels"].get)
    scribbles = ", ".join(f"{v} ({n})" for v, n in scribble_counts.items()) or "none"
    summary = (f"{root}: valid: {counted(len(cases), 'case')}, channels {','.join(channels)}, "
               f"{counted(num_classes, 'class', 'classes')} ({','.join(label_names)}), median spacing "
               f"{'x'.join(f'{s:g}' for s in median)} mm (z,y,x), splits {kind}, scribbles {scribbles}")
    for variant, per_case in coverages.items():
        means = ", ".join(f"{name} {np.mean([c[name] for c in per_case]):.3f} %" for name in label_names)
        summary += f"\n  scribble coverage, {variant}, mean of {counted(len(per_case), 'case')}: {means}"
    return check.problems, summary


def run(args: argparse.Namespace) -> int:
    root = Path(args.dataset)
    problems, summary = validate_dataset(root)
    for line in leftovers_beside(root):
        print(f"warning: {line}", file=sys.stderr)
    for line in problems:
        print(line)
    if problems:
        print(f"cmfnet validate: {counted(len(problems), 'problem')} in {root}", flush=True)
        return 2  # bad input, as every other command reports it
    print(summary)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate", help="check a dataset folder (grids, label values, splits, scribbles)",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("dataset", metavar="DIR", help="dataset folder (with dataset.json)")
    parser.set_defaults(func=run)
