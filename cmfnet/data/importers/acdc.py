"""``cmfnet import acdc``: the WSL4MIS ACDC HDF5 volumes with their scribbles."""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk

from cmfnet.errors import InputError
from cmfnet.data.importers.common import (Importer, check_case_id, identity_lookup, import_cases,
                                     map_labels, scribble_lookup)
from cmfnet.data.io import Geometry
from cmfnet.data.preprocess import CaseVolumes
from cmfnet.data.splits import cross_validation


ACDC_LABELS = {"background": 0, "RV": 1, "myocardium": 2, "LV": 3}


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    try:
        with h5py.File(path, "r") as handle:
            return {key: handle[key][()] for key in ("image", "label", "scribble") if key in handle}
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"cannot read HDF5 ({str(err).splitlines()[0][:120]})") from None


def _h5_keys(path: Path) -> set[str]:
    try:
        with h5py.File(path, "r") as handle:
            return set(handle.keys())
    except OSError as err:
        raise InputError(path, f"cannot read HDF5 ({str(err).splitlines()[0][:120]})") from None


def run(args: argparse.Namespace) -> int:
    """Import the ACDC volumes at ``--src``; the two frames of a patient stay in one split part."""
    src = Path(args.src)
    files = {check_case_id(p.stem, p): p for p in sorted(src.glob("*.h5"))} if src.is_dir() else {}
    if not files:
        raise InputError(src, "no .h5 volumes (WSL4MIS ACDC_training_volumes/*.h5)")
    if any(s <= 0 for s in args.spacing):
        raise InputError("--spacing", f"spacings must be positive, got {args.spacing}")
    # frames of one patient (patient001_frame01, patient001_frame12) stay in one split part
    groups = {case: case.split("_frame")[0] for case in files}
    splits, protocol = cross_validation(sorted(files), args.folds, args.seed, args.val_from_train, src, groups)
    has_scribbles = any("scribble" in _h5_keys(p) for p in files.values())
    unlabelled = scribble_lookup(len(ACDC_LABELS), "highest")  # WSL4MIS trains with ignore_index=4

    def volume(array: np.ndarray, path: Path, key: str) -> sitk.Image:
        if array.ndim != 3:
            raise InputError(path, f"'{key}' has shape {array.shape}; expected a 3D (z, y, x) volume "
                                   "(use ACDC_training_volumes, not the 2D slices)")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise InputError(path, f"'{key}' contains NaN or inf")
        return Geometry.default(array.shape, tuple(args.spacing)).apply(
            sitk.GetImageFromArray(array.astype(np.float32) if key == "image" else array))

    def load(case: str) -> tuple[CaseVolumes, Path, Path | None]:
        path = files[case]
        data = _read_h5(path)
        missing = [k for k in ("image", "label") + (("scribble",) if has_scribbles else ()) if k not in data]
        if missing:
            raise InputError(path, f"missing HDF5 dataset(s) {missing}")
        shapes = {k: v.shape for k, v in data.items()}
        if len(set(shapes.values())) > 1:
            raise InputError(path, f"image, label and scribble shapes differ: {shapes}")
        image = volume(data["image"], path, "image")
        label = map_labels(volume(data["label"], path, "label"), path, identity_lookup(4, False), "label")
        scribble = None
        if has_scribbles:
            scribble = map_labels(volume(data["scribble"], path, "scribble"), path, unlabelled,
                                  "scribble (0-3, 4 = unlabelled)")
        return CaseVolumes(case, [image], label, scribble, {"source": str(path)}), path, path

    # WSL4MIS stores images clipped at the 99th percentile and min-max scaled: declared 'none'.
    return import_cases(args, channels=["MR"], labels=ACDC_LABELS, kinds=["none"],
                         cases=sorted(files), load=load, splits=splits, protocol=protocol,
                         source={"importer": "acdc", "path": str(src), "spacing_given": list(args.spacing)},
                         case_groups=groups)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, type=Path)
    parser.add_argument("--spacing", required=True, type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="voxel spacing in mm (the files do not store it)")


IMPORTER = Importer("acdc", "ACDC HDF5 volumes with scribbles (WSL4MIS)", add_arguments, run)
