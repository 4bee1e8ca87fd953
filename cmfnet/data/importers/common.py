"""What every importer shares: reading and checking source volumes, building the dataset folder,
the options every format takes, and the :class:`Importer` record a format registers.

Every importer builds the dataset in a temporary folder (:func:`cmfnet.data.io.atomic_dir`) and moves
it into place only when complete, so bad input (one :class:`InputError` naming the file, exit 2)
never leaves a partial dataset behind. It prints one summary line: cases, channels, classes,
spacing and splits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cmfnet.errors import InputError
from cmfnet.data.io import (CASE_ID, FILE_ENDING, IGNORE, Geometry, atomic_dir, counted, recover_leftovers, write_json)
from cmfnet.data.dataset import make_dataset_json
from cmfnet.data.preprocess import (DEFAULT_CT_BODY_HU, DEFAULT_CT_WINDOW, DEFAULT_MR_CLIP, CaseVolumes,
                               PreprocessConfig, declare_normalization, preprocess_case)
from cmfnet.data.splits import DEFAULT_SEED, VAL_FROM_TRAIN
from cmfnet.data.validate import labelmap_problem, read_volume

GIVEN = "given"
# Written into every imported dataset: a folder holding it but no dataset.json is an import whose
# output was removed (Snakemake deletes a job's outputs before it reruns it), safe to rebuild.
MARKER = ".cmfnet-import"
# What a whole-dataset importer's case loader returns: the case, its label file and its scribble file
CaseLoader = Callable[[str], tuple[CaseVolumes, Path, Path | None]]


@dataclass(frozen=True)
class Importer:
    """One ``cmfnet import <name>`` format: its own options and the function that runs it.

    ``adds_cases``: the format adds one case to a dataset at a time (``paired``), so it takes no
    ``--force`` and its split options default to what the dataset recorded.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    adds_cases: bool = False


# -- reading and label maps ------------------------------------------------------------------------
def read_source(path: Path, what: str) -> sitk.Image:
    """A source image as a SimpleITK image; complete, 3D and finite, or an InputError naming it."""
    array, geometry = read_volume(path, what)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(path, f"{what} contains NaN or inf")
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return geometry.apply(sitk.GetImageFromArray(array))


def map_labels(image: sitk.Image, path: Path, lookup: dict[int, int], what: str) -> sitk.Image:
    """Remap a label map through ``lookup`` (source value -> stored value) as uint8.

    Values absent from ``lookup`` are outside the declared classes: an InputError naming the file.
    """
    array = sitk.GetArrayViewFromImage(image)
    problem = labelmap_problem(array, set(lookup))
    if problem:
        raise InputError(path, f"{what}: {problem}")
    table = np.zeros(max(lookup) + 1, np.uint8)
    for source, target in lookup.items():
        table[source] = target
    out = sitk.GetImageFromArray(table[array.astype(np.int64)])
    out.CopyInformation(image)
    return out


def identity_lookup(num_classes: int, scribble: bool) -> dict[int, int]:
    lookup = {v: v for v in range(num_classes)}
    if scribble:
        lookup[IGNORE] = IGNORE
    return lookup


#: how the major sources mark an unlabelled scribble voxel: ours and WORD's 255; WSL4MIS (4 on
#: ACDC's classes 0-3) and nnU-Net (the ignore label, the highest integer label) the class count
UNLABELLED_CONVENTIONS = ("255", "highest")


def scribble_lookup(num_classes: int, unlabelled: str) -> dict[int, int]:
    """Classes kept, the source's unlabelled value (``UNLABELLED_CONVENTIONS``) stored as 255."""
    if unlabelled not in UNLABELLED_CONVENTIONS:
        raise ValueError(f"unknown unlabelled convention {unlabelled!r}; known: {UNLABELLED_CONVENTIONS}")
    return identity_lookup(num_classes, True) if unlabelled == "255" else \
        {**identity_lookup(num_classes, False), num_classes: IGNORE}


def require_same_grid(images: list[sitk.Image], paths: list[Path], why: str) -> None:
    reference = Geometry.of(images[0])
    for image, path in zip(images[1:], paths[1:], strict=True):
        geometry = Geometry.of(image)
        if not geometry.same_grid(reference):
            raise InputError(path, f"grid {geometry.shape} @ {_mm(geometry.spacing)} mm differs from "
                                   f"{paths[0].name} ({reference.shape} @ {_mm(reference.spacing)} mm){why}")


def _mm(spacing: tuple[float, ...]) -> str:
    return "x".join(f"{s:.4g}" for s in spacing)


def check_case_id(case: str, origin: str | Path) -> str:
    """``case`` if it is a valid id; otherwise an error naming the id and where it came from."""
    if not CASE_ID.match(case):
        raise InputError(f"case id {case!r}", f"invalid (from {origin}): use letters, digits, '.', '_' "
                                              "and '-', starting with a letter or digit")
    return case


def existing_nifti(path: Path) -> Path:
    """``x.nii.gz``, or ``x.nii`` where only the uncompressed file exists."""
    plain = path.with_name(path.name.removesuffix(".gz"))
    return plain if not path.is_file() and plain.is_file() else path


# -- building a dataset ---------------------------------------------------------------------------
class DatasetBuilder:
    """Preprocesses, checks and writes cases into a folder under construction, then its dataset.json."""

    def __init__(self, root: Path, channels: list[str], labels: dict[str, int], kinds: list[str],
                 config: PreprocessConfig, allow_empty_labels: bool, existing: dict[str, Any] | None = None) -> None:
        self.root = root
        self.channels = channels
        self.labels = labels
        self.kinds = kinds
        self.config = config
        self.allow_empty_labels = allow_empty_labels
        previous = (existing or {}).get("preprocessing", {})
        self.cases: list[str] = list((existing or {}).get("cases", []))
        self.records: dict[str, Any] = dict(previous.get("cases", {}))
        self.case_spacing = {c: tuple(r["spacing"]) for c, r in self.records.items() if "spacing" in r}
        for folder in ("imagesTr", "labelsTr"):
            (root / folder).mkdir(parents=True, exist_ok=True)

    def _require_labelled(self, image: sitk.Image, path: Path, problem: str, unlabelled: int, stage: str) -> None:
        if unlabelled == 0 and self.allow_empty_labels:
            return
        if not np.any(sitk.GetArrayViewFromImage(image) != unlabelled):
            hint = " (pass --allow-empty-labels if cases without the target are expected)" if unlabelled == 0 else ""
            raise InputError(path, f"{problem}{stage}{hint}")

    def add(self, case: CaseVolumes, label_path: Path, scribble_path: Path | None, variant: str = GIVEN) -> None:
        if case.case in self.cases:
            raise InputError(label_path, f"duplicate case id '{case.case}'")
        assert case.label is not None
        empty_label, empty_scribble = "empty label: no foreground voxel", "empty scribble: no labelled voxel"
        self._require_labelled(case.label, label_path, empty_label, 0, "")
        if case.scribble is not None:
            self._require_labelled(case.scribble, scribble_path, empty_scribble, IGNORE, "")
        case = preprocess_case(case, self.kinds, self.config)
        stage = " after preprocessing (crop/resampling)"
        self._require_labelled(case.label, label_path, empty_label, 0, stage)
        if case.scribble is not None:
            self._require_labelled(case.scribble, scribble_path, empty_scribble, IGNORE, stage)
        crop = case.record.get("crop")
        if isinstance(crop, dict) and crop["label_voxels_lost"]:
            print(f"warning: {label_path}: cropping to the body box found in the images drops "
                  f"{counted(crop['label_voxels_lost'], 'labelled voxel')}", file=sys.stderr)
        for c, image in enumerate(case.images):
            self._write(image, self.root / "imagesTr" / f"{case.case}_{c:04d}{FILE_ENDING}")
        self._write(sitk.Cast(case.label, sitk.sitkUInt8), self.root / "labelsTr" / f"{case.case}{FILE_ENDING}")
        if case.scribble is not None:
            folder = self.root / "scribblesTr" / variant
            folder.mkdir(parents=True, exist_ok=True)
            self._write(sitk.Cast(case.scribble, sitk.sitkUInt8), folder / f"{case.case}{FILE_ENDING}")
        self.cases.append(case.case)
        self.records[case.case] = case.record
        self.case_spacing[case.case] = tuple(case.record["spacing"])

    @staticmethod
    def _write(image: sitk.Image, path: Path) -> None:
        sitk.WriteImage(image, str(path), useCompression=True)

    def spacing(self) -> tuple[float, ...]:
        """Median spacing over cases (z, y, x); per-case spacings stay in the images' headers."""
        values = list(self.case_spacing.values())
        return tuple(statistics.median(s[a] for s in values) for a in range(3)) if values else ()

    def finish(self, name: str, splits: list[dict[str, Any]], protocol: dict[str, Any],
               normalization: dict[str, Any], source: dict[str, Any], extra_steps: list[dict[str, Any]] = (),
               **extra: Any) -> dict[str, Any]:
        meta = make_dataset_json(
            name, self.channels, self.labels, self.cases, self.spacing(), splits,
            split_protocol=protocol, normalization=normalization, source=source,
            preprocessing={"config": self.config.to_record(),
                           "steps": list(extra_steps) + self.config.steps(),
                           "cases": {c: self.records[c] for c in self.cases}},
            **extra)
        write_json(meta, self.root / "dataset.json")
        (self.root / MARKER).write_text("made by cmfnet import\n")
        _open_permissions(self.root)
        return meta


def _open_permissions(root: Path) -> None:
    """Temporary folders and files are created private (0700/0600); a finished dataset is shared
    like any folder the user makes, so give it the umask's usual permissions before it appears."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def refuse_foreign_out(out: Path, rebuild: bool = False) -> None:
    """Never replace a folder that is not a dataset (``--out ~`` must not wipe a home folder).

    With ``rebuild`` (a whole-dataset import), an import's folder whose dataset.json is gone may be
    replaced: that is what Snakemake leaves when it reruns the import.
    """
    if not out.exists() or (out / "dataset.json").is_file():
        return
    if out.is_dir() and (not any(out.iterdir()) or (rebuild and (out / MARKER).is_file())):
        return
    raise InputError(out, "exists and is not a dataset folder (no dataset.json); refusing to replace it")


def clean_leftovers(out: Path) -> None:
    for note in recover_leftovers(out):
        print(f"note: {note}", file=sys.stderr)


def _refuse_existing_dataset(out: Path, force: bool) -> None:
    """A whole-dataset import replaces ``out`` (its scribbles too): only with ``--force``."""
    if force or not (out / "dataset.json").is_file():
        return
    scribbles = out / "scribblesTr"
    variants = sorted(p.name for p in scribbles.iterdir() if p.is_dir()) if scribbles.is_dir() else []
    held = f" and scribbles {', '.join(variants)}" if variants else ""
    raise InputError(out, f"already holds a dataset{held}; pass --force to replace it (scribbles included), "
                          "or choose another --out")


def summary(out: Path, meta: dict[str, Any]) -> str:
    """The one line an import prints: cases, channels, classes, spacing and splits."""
    splits = meta["splits"]
    protocol = meta.get("split_protocol", {})
    if not splits:
        split_text = "no splits yet (needs more cases)"
    elif protocol.get("kind") == "fixed":
        split_text = "fixed " + "/".join(str(len(splits[0][p])) for p in ("train", "val", "test"))
    else:
        split_text = f"{len(splits)}-fold" + (" (val reuses the training case)" if protocol.get(VAL_FROM_TRAIN) else "")
    labels = sorted(meta["labels"], key=meta["labels"].get)
    return (f"{out}: {counted(len(meta['cases']), 'case')}, channels {','.join(meta['channel_names'].values())}, "
            f"classes {','.join(labels)}, spacing {_mm(tuple(meta['spacing']))} mm (z,y,x), splits {split_text}")


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """The preprocessing the common options ask for (crop, resampling)."""
    return PreprocessConfig(
        crop_body=bool(args.crop_body),
        crop_margin_mm=args.crop_margin if args.crop_margin is not None else 10.0,
        ct_body_threshold=args.ct_body_threshold if args.ct_body_threshold is not None else DEFAULT_CT_BODY_HU,
        target_spacing=tuple(args.target_spacing) if args.target_spacing else None)


def normalization_from_args(channels: list[str], kinds: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The normalisation each channel declares in dataset.json, from ``--ct-window``/``--mr-clip-percentiles``."""
    return declare_normalization(channels, kinds, tuple(args.ct_window or DEFAULT_CT_WINDOW),
                                 tuple(args.mr_clip_percentiles or DEFAULT_MR_CLIP))


def import_cases(args: argparse.Namespace, *, channels: list[str], labels: dict[str, int],
                 kinds: list[str], cases: list[str], load: CaseLoader,
                 splits: list[dict[str, Any]], protocol: dict[str, Any], source: dict[str, Any],
                 **extra: Any) -> int:
    """The part every whole-dataset importer shares: build, write dataset.json, print the summary."""
    out = Path(args.out)
    clean_leftovers(out)
    refuse_foreign_out(out, rebuild=True)
    _refuse_existing_dataset(out, args.force)
    config = config_from_args(args)
    started = time.monotonic()
    with atomic_dir(out) as tmp:
        builder = DatasetBuilder(tmp, channels, labels, kinds, config, args.allow_empty_labels)
        for number, case in enumerate(cases, 1):
            volumes, label_path, scribble_path = load(case)
            builder.add(volumes, label_path, scribble_path)
            # one line per case on stderr, so a log file shows how far a long import got
            print(f"import: case {number}/{len(cases)} {case} done ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr, flush=True)
        meta = builder.finish(args.name or out.name, splits, protocol,
                              normalization_from_args(channels, kinds, args), source, **extra)
    print(summary(out, meta))
    return 0


# -- options every format takes -------------------------------------------------------------------
def common_options(adds_cases: bool) -> argparse.ArgumentParser:
    """Output, split and preprocessing options, as a parent parser for each format's sub-parser."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--name", help="dataset name (default: the --out folder's name)")
    splits = parser.add_argument_group("splits (when the data defines none)")
    splits.add_argument("--folds", type=int, default=None if adds_cases else 5,
                        help="k-fold cross-validation (default 5; at most one fold per case)")
    splits.add_argument("--seed", type=int, default=None if adds_cases else DEFAULT_SEED,
                        help="split seed (default 12345)")
    splits.add_argument("--val-from-train", action="store_true",
                        help="let a fold whose only non-test case is one case (e.g. 2 cases) validate on it")
    prep = parser.add_argument_group("preprocessing (recorded in dataset.json)")
    prep.add_argument("--crop-body", action="store_true",
                      help="crop to the body's bounding box, computed from the images only")
    prep.add_argument("--crop-margin", type=float, metavar="MM", help="margin around the body box (default 10 mm)")
    prep.add_argument("--ct-body-threshold", type=float, metavar="HU",
                      help="CT voxels above this are body (default -500 HU)")
    prep.add_argument("--target-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                      help="resample to this spacing in mm (images linear, labels nearest)")
    prep.add_argument("--ct-window", type=float, nargs=2, metavar=("LO", "HI"),
                      help="declared CT normalisation window in HU (default -160 240, abdominal soft "
                           "tissue; thorax or PET/CT: see docs/real-data.md, 'Choosing a CT window')")
    prep.add_argument("--mr-clip-percentiles", type=float, nargs=2, metavar=("LO", "HI"),
                      help="declared MR clipping percentiles before z-scoring (default 0.5 99.5)")
    parser.add_argument("--allow-empty-labels", action="store_true",
                        help="accept cases whose label has no foreground voxel")
    if not adds_cases:
        parser.add_argument("--force", action="store_true",
                            help="replace an existing dataset at --out, its scribbles included")
    return parser

