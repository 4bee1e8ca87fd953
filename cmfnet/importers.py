"""``cmfnet import <format>``: bring real data into the suite's dataset format.

Formats: ``paired`` (one case of co-acquired modalities at a time, e.g. NPC CT + MR), ``word``
(the WORD release), ``brats`` (BraTS 2019/2020 naming and the BraTS-2015 DeepMedic layout),
``acdc`` (WSL4MIS HDF5 volumes with scribbles) and ``nnunet`` (an nnU-Net raw dataset).

Every importer builds the dataset in a temporary folder (:func:`cmfnet.io.atomic_dir`) and moves
it into place only when complete, so bad input (one :class:`InputError` naming the file, exit 2)
never leaves a partial dataset behind. It prints one summary line: cases, channels, classes,
spacing and splits.

Splits are the data's own when it defines them (WORD's folders, nnU-Net's ``splits_final.json``),
otherwise k-fold cross-validation (:func:`cmfnet.splits.kfold_splits`). With few cases the number of
folds drops to the number of cases (leave-one-out); a fold whose non-test part is a single case
(any 2-case dataset) cannot have disjoint train and validation cases, so the importer refuses it
unless ``--val-from-train`` is given, in which case that case is both train and val and the fold
says so (``"val_from_train": true``); ``cmfnet validate`` accepts exactly that and nothing looser.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import SimpleITK as sitk
from sklearn.model_selection import KFold

from cmfnet.errors import InputError
from cmfnet.io import (CASE_ID, FILE_ENDING, IGNORE, Geometry, atomic_dir, counted, make_dataset_json,
                       read_dataset_json, read_json, recover_leftovers, write_json)
from cmfnet.preprocess import (DEFAULT_CT_BODY_HU, DEFAULT_CT_WINDOW, DEFAULT_MR_CLIP, CaseVolumes,
                               PreprocessConfig, declare_normalization, labelled_outside, outside_value,
                               preprocess_case, register_rigid, resample_onto)
from cmfnet.splits import kfold_splits
from cmfnet.validate import VAL_FROM_TRAIN, labelmap_problem, read_volume

VAL_FRACTION = 0.1  # as cmfnet.splits.kfold_splits
DEFAULT_SEED = 12345  # nnU-Net's KFold seed, as cmfnet.splits
GIVEN = "given"
# Written into every imported dataset: a folder holding it but no dataset.json is an import whose
# output was removed (Snakemake deletes a job's outputs before it reruns it), safe to rebuild.
MARKER = ".cmfnet-import"


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


# -- splits ---------------------------------------------------------------------------------------
def _fold_from_rest(rest: list[str], test: list[str], rng: np.random.Generator, groups: dict[str, str],
                    val_from_train: bool, fold: int, source: Path) -> dict[str, Any]:
    """Train and validation parts of one fold from its non-test cases, keeping groups together."""
    rest_groups = sorted({groups.get(c, c) for c in rest})
    if len(rest_groups) >= 2:
        n_val = max(1, int(round(VAL_FRACTION * len(rest_groups))))
        val_groups = set(rng.choice(rest_groups, size=n_val, replace=False).tolist())
        val = sorted(c for c in rest if groups.get(c, c) in val_groups)
        return {"train": sorted(c for c in rest if c not in val), "val": val, "test": sorted(test)}
    if not rest:
        raise InputError(source, f"fold {fold} has no training case")
    if val_from_train:
        return {"train": sorted(rest), "val": sorted(rest), "test": sorted(test), VAL_FROM_TRAIN: True}
    raise InputError(source, f"fold {fold} keeps only {sorted(rest)} besides its test cases: too few for "
                             "disjoint train and val; pass --val-from-train to validate on the training "
                             "case, or give more cases or folds")


def splits_from_test_parts(test_parts: list[list[str]], cases: list[str], seed: int, groups: dict[str, str],
                           val_from_train: bool, source: Path) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [_fold_from_rest([c for c in cases if c not in set(test)], test, rng, groups, val_from_train, k, source)
            for k, test in enumerate(test_parts)]


def cross_validation(cases: list[str], folds: int, seed: int, val_from_train: bool, source: Path,
                     groups: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """K-fold splits and their protocol record.

    ``groups`` (case -> group, e.g. ACDC's two frames of one patient) keeps a group in one part.
    With fewer groups than folds, the folds drop to the number of groups (leave-one-out).
    """
    groups = groups or {}
    if folds < 2:
        raise InputError(source, f"--folds {folds}: cross-validation needs at least 2 folds")
    units = sorted({groups.get(c, c) for c in cases})
    if len(units) < 2:
        raise InputError(source, f"{counted(len(cases), 'case')}: cross-validation needs at least 2 "
                                 + ("patients" if groups else "cases"))
    k = min(folds, len(units))
    if not groups and len(units) >= k + 1 and len(units) - math.ceil(len(units) / k) >= 2:
        splits: list[dict[str, Any]] = kfold_splits(cases, k, val_fraction=VAL_FRACTION, seed=seed)
    else:
        by_unit = [[c for c in sorted(cases) if groups.get(c, c) in {units[i] for i in test}]
                   for _, test in KFold(k, shuffle=True, random_state=seed).split(units)]
        splits = splits_from_test_parts(by_unit, sorted(cases), seed, groups, val_from_train, source)
    protocol = {"kind": "kfold", "folds": k, "requested_folds": folds, "seed": seed,
                "val_fraction": VAL_FRACTION, "grouped": bool(groups),
                VAL_FROM_TRAIN: any(s.get(VAL_FROM_TRAIN) for s in splits)}
    return splits, protocol


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


def _refuse_foreign_out(out: Path, rebuild: bool = False) -> None:
    """Never replace a folder that is not a dataset (``--out ~`` must not wipe a home folder).

    With ``rebuild`` (a whole-dataset import), an import's folder whose dataset.json is gone may be
    replaced: that is what Snakemake leaves when it reruns the import.
    """
    if not out.exists() or (out / "dataset.json").is_file():
        return
    if out.is_dir() and (not any(out.iterdir()) or (rebuild and (out / MARKER).is_file())):
        return
    raise InputError(out, "exists and is not a dataset folder (no dataset.json); refusing to replace it")


def _clean_leftovers(out: Path) -> None:
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


def _summary(out: Path, meta: dict[str, Any]) -> str:
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


def _config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(
        crop_body=bool(args.crop_body),
        crop_margin_mm=args.crop_margin if args.crop_margin is not None else 10.0,
        ct_body_threshold=args.ct_body_threshold if args.ct_body_threshold is not None else DEFAULT_CT_BODY_HU,
        target_spacing=tuple(args.target_spacing) if args.target_spacing else None)


def _normalization(channels: list[str], kinds: list[str], args: argparse.Namespace) -> dict[str, Any]:
    return declare_normalization(channels, kinds, tuple(args.ct_window or DEFAULT_CT_WINDOW),
                                 tuple(args.mr_clip_percentiles or DEFAULT_MR_CLIP))


def _import_cases(args: argparse.Namespace, *, channels: list[str], labels: dict[str, int],
                  kinds: list[str], cases: list[str], load: Callable[[str], tuple[CaseVolumes, Path, Path | None]],
                  splits: list[dict[str, Any]], protocol: dict[str, Any], source: dict[str, Any],
                  **extra: Any) -> int:
    """The part every whole-dataset importer shares: build, write dataset.json, print the summary."""
    out = Path(args.out)
    _clean_leftovers(out)
    _refuse_foreign_out(out, rebuild=True)
    _refuse_existing_dataset(out, args.force)
    config = _config_from_args(args)
    started = time.monotonic()
    with atomic_dir(out) as tmp:
        builder = DatasetBuilder(tmp, channels, labels, kinds, config, args.allow_empty_labels)
        for number, case in enumerate(cases, 1):
            volumes, label_path, scribble_path = load(case)
            builder.add(volumes, label_path, scribble_path)
            # one line per case on stderr, so a log file shows how far a long import got
            print(f"import: case {number}/{len(cases)} {case} done ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr, flush=True)
        meta = builder.finish(args.name or out.name, splits, protocol, _normalization(channels, kinds, args),
                              source, **extra)
    print(_summary(out, meta))
    return 0


# -- paired: one case of co-acquired modalities ---------------------------------------------------
def _labels_file(path: Path) -> dict[str, int]:
    """A labels JSON: ``{"background": 0, "tumour": 1}``, or a file holding that as its "labels"
    (an nnU-Net v2 dataset.json)."""
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise InputError(path, 'expected a JSON object of class names to ids, e.g. {"background": 0, "tumour": 1}')
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(path, f"label '{name}' has value {json.dumps(value)}, not an integer id")
    return dict(data)


def _parse_labels(text: str) -> dict[str, int]:
    """``--labels``: name=id pairs (background=0,tumour=1) or a labels JSON file."""
    if text.lower().endswith(".json") or Path(text).is_file():
        source: str | Path = Path(text)
        labels = _labels_file(Path(text))
    else:
        source, labels = "--labels", {}
        for item in text.split(","):
            name, _, value = item.partition("=")
            if not name.strip() or not value.strip().isdigit():
                raise InputError("--labels", f"expected name=id pairs such as background=0,tumour=1 or a "
                                             f"labels JSON file, got '{item}'")
            labels[name.strip()] = int(value)
    if sorted(labels.values()) != list(range(len(labels))) or labels.get("background") != 0:
        raise InputError(source, f"ids must be 0..K with background=0, got {labels}")
    return labels


def channel_kind(name: str) -> str:
    """CT channels (named CT...) get the HU window; every other modality the MR z-score."""
    return "ct" if name.upper().startswith("CT") else "mr"


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link an existing dataset into the folder being built (files are only ever replaced by
    rename, never modified in place, so sharing them is safe); copy where links are impossible."""
    for path in sorted(source.rglob("*")):
        if path.name.startswith(".") or path.name == "dataset.json":
            continue
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def _existing_settings(meta_path: Path, meta: dict[str, Any], args: argparse.Namespace) -> PreprocessConfig:
    """The dataset's recorded preprocessing; explicit options must agree with it."""
    recorded = PreprocessConfig.from_record(meta.get("preprocessing", {}).get("config", {}))
    asked = {"--crop-body": (args.crop_body or None, recorded.crop_body),
             "--crop-margin": (args.crop_margin, recorded.crop_margin_mm),
             "--ct-body-threshold": (args.ct_body_threshold, recorded.ct_body_threshold),
             "--target-spacing": (tuple(args.target_spacing) if args.target_spacing else None,
                                  recorded.target_spacing)}
    for option, (given, stored) in asked.items():
        if given is not None and given != stored:
            raise InputError(meta_path, f"dataset was built with {option} = {stored}; cannot add a case with {given}")
    normalization = meta.get("normalization", {})
    for option, value, key in (("--ct-window", args.ct_window, "window"),
                               ("--mr-clip-percentiles", args.mr_clip_percentiles, "clip_percentiles")):
        for channel, spec in normalization.items():
            if value is not None and key in spec and list(spec[key]) != list(value):
                raise InputError(meta_path, f"dataset declares {key} {spec[key]} for {channel}; cannot add a "
                                            f"case with {option} {value}")
    return recorded


def _onto_reference(labelmap: sitk.Image, path: Path, what: str, unlabelled: int, reference: sitk.Image,
                    reference_path: Path) -> sitk.Image:
    """A label map resampled onto the first image's grid; refused when it lies wholly outside that
    image's field of view (it would otherwise pass as an empty label), warned when partly."""
    outside, total = labelled_outside(labelmap, reference, unlabelled)
    if total and outside == total:
        raise InputError(path, f"{what} lies outside the field of view of {reference_path} (none of its "
                               f"{counted(total, 'labelled voxel')} falls inside it): is it drawn on this case, "
                               "in physical coordinates of the same scanner frame?")
    if outside:
        print(f"warning: {path}: {outside} of {counted(total, 'labelled voxel')} lie outside the field of view "
              f"of {reference_path} and are dropped", file=sys.stderr)
    return resample_onto(labelmap, reference, labelmap=True, default=unlabelled)


def run_paired(args: argparse.Namespace) -> int:
    out = Path(args.out)
    meta_path = out / "dataset.json"
    _clean_leftovers(out)
    _refuse_foreign_out(out)
    existing = read_dataset_json(meta_path) if meta_path.is_file() else None
    image_paths = [Path(p) for p in args.image]
    if len(image_paths) < 2:
        raise InputError("--image", "give at least two co-acquired modalities (one --image each)")
    if existing:
        channels = [existing["channel_names"][str(i)] for i in range(len(existing["channel_names"]))]
        labels = {k: int(v) for k, v in existing["labels"].items()}
        if args.channel_names and args.channel_names.split(",") != channels:
            raise InputError(meta_path, f"dataset channels are {channels}, not {args.channel_names}")
        if args.labels and _parse_labels(args.labels) != labels:
            raise InputError(meta_path, f"dataset labels are {labels}, not {args.labels}")
        config = _existing_settings(meta_path, existing, args)
        normalization = existing.get("normalization", {})
        kinds = [channel_kind(c) for c in channels]
        if args.case in existing["cases"]:
            raise InputError(meta_path, f"duplicate case id '{args.case}': already in the dataset")
    else:
        if not args.channel_names or not args.labels:
            raise InputError("--channel-names/--labels", "a new dataset needs --channel-names (e.g. CT,MR) "
                                                          "and --labels (e.g. background=0,tumour=1)")
        channels = [c.strip() for c in args.channel_names.split(",")]
        labels = _parse_labels(args.labels)
        config = _config_from_args(args)
        kinds = [channel_kind(c) for c in channels]
        normalization = _normalization(channels, kinds, args)
    if len(set(channels)) != len(channels):
        raise InputError("--channel-names", f"channel names must be unique, got {channels}")
    if len(image_paths) != len(channels):
        raise InputError(image_paths[-1], f"{len(image_paths)} images given for {len(channels)} channels {channels}")
    case_id = check_case_id(args.case, "--case")

    images = [read_source(p, f"modality '{c}'") for p, c in zip(image_paths, channels, strict=True)]
    label_path = Path(args.label)
    label = map_labels(read_source(label_path, "label"), label_path, identity_lookup(len(labels), False), "label")
    scribble_path = Path(args.scribble) if args.scribble else None
    scribble = None
    if scribble_path:
        scribble = map_labels(read_source(scribble_path, "scribble"), scribble_path,
                              identity_lookup(len(labels), True), "scribble")
    reference = images[0]
    record: dict[str, Any] = {"sources": [str(p) for p in image_paths], "registration": {}}
    if args.no_resample:
        require_same_grid(images + [label] + ([scribble] if scribble else []),
                          image_paths + [label_path] + ([scribble_path] if scribble_path else []),
                          " (--no-resample refuses modalities on different grids)")
    aligned = [reference]
    for channel, image in zip(channels[1:], images[1:], strict=True):
        transform = None
        if args.register:
            def log(text: str, channel: str = channel) -> None:
                print(f"register {channel} onto {channels[0]}: {text}", file=sys.stderr, flush=True)

            transform, record["registration"][channel] = register_rigid(reference, image, log=log)
            for warning in record["registration"][channel]["warnings"]:
                print(f"warning: {image_paths[channels.index(channel)]}: {warning}", file=sys.stderr)
        aligned.append(resample_onto(image, reference, labelmap=False, default=outside_value(image),
                                     transform=transform))
    label = _onto_reference(label, label_path, "label", 0, reference, image_paths[0])
    if scribble is not None:
        scribble = _onto_reference(scribble, scribble_path, "scribble", IGNORE, reference, image_paths[0])
    case = CaseVolumes(case_id, aligned, label, scribble, record)

    protocol_before = (existing or {}).get("split_protocol", {})
    folds = args.folds or protocol_before.get("requested_folds", 5)
    seed = args.seed if args.seed is not None else protocol_before.get("seed", DEFAULT_SEED)
    val_from_train = args.val_from_train or bool(protocol_before.get("allow_val_from_train"))
    align_step = {"step": "align", "onto": "first image's grid, physical coordinates",
                  "registration": "rigid, mutual information (per case, when --register; applied only when "
                                  "it raises the metric over the scanner geometry, see each case's record)",
                  "images": "linear", "labels": "nearest", "scribbles": "nearest (255 outside)"}
    with atomic_dir(out) as tmp:
        if existing:
            _link_tree(out, tmp)
        builder = DatasetBuilder(tmp, channels, labels, kinds, config, args.allow_empty_labels, existing)
        builder.add(case, label_path, scribble_path, args.scribble_variant)
        try:
            splits, protocol = cross_validation(builder.cases, folds, seed, val_from_train, meta_path)
        except InputError as err:
            splits, protocol = [], {"kind": "kfold", "pending": err.problem}
            print(f"note: {out}: no splits yet: {err.problem}", file=sys.stderr)
        protocol.update(requested_folds=folds, seed=seed, allow_val_from_train=val_from_train)
        meta = builder.finish((existing or {}).get("name") or args.name or out.name, splits, protocol,
                              normalization, {"importer": "paired"}, [align_step])
    print(_summary(out, meta))
    return 0


# -- WORD -----------------------------------------------------------------------------------------
WORD_PARTS = (("train", "imagesTr", "labelsTr"), ("val", "imagesVal", "labelsVal"), ("test", "imagesTs", "labelsTs"))
WORD_LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4, "stomach": 5,
               "gallbladder": 6, "pancreas": 7}
# DMSPS remap of the WORD release ids (1 liver ... 6 gallbladder, 7 esophagus, 8 pancreas,
# 9 duodenum ... 16 right femoral head) to the paper's seven organs: 7 -> 0, 8 -> 7, 9-16 -> 0.
WORD_REMAP = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 0, 8: 7, **{v: 0 for v in range(9, 17)}}


def _nifti_cases(folder: Path) -> dict[str, Path]:
    cases = {}
    for path in sorted(folder.glob("*.nii*")):
        cases[re.sub(r"\.nii(\.gz)?$", "", path.name)] = path
    return cases


def run_word(args: argparse.Namespace) -> int:
    src = Path(args.src)
    owner: dict[str, Path] = {}
    parts: dict[str, list[str]] = {}
    for part, images_dir, _ in WORD_PARTS:
        folder = src / images_dir
        found = _nifti_cases(folder) if folder.is_dir() else {}
        if not found:
            raise InputError(folder, f"no images: the WORD layout needs {', '.join(p[1] for p in WORD_PARTS)}")
        for case, path in found.items():
            check_case_id(case, path)
            if case in owner:
                raise InputError(path, f"duplicate case id '{case}' (also {owner[case]})")
            owner[case] = path
        parts[part] = sorted(found)
    if [len(parts[p]) for p in ("train", "val", "test")] != [100, 20, 30]:
        print(f"note: {src}: {len(parts['train'])}/{len(parts['val'])}/{len(parts['test'])} cases, not the "
              "release's 100/20/30", file=sys.stderr)
    label_dirs = {case: src / labels for part, _, labels in WORD_PARTS for case in parts[part]}
    training = set(parts["train"])
    scribble_lookup = {**WORD_REMAP, IGNORE: IGNORE}

    def load(case: str) -> tuple[CaseVolumes, Path, Path | None]:
        image = read_source(owner[case], "CT image")
        label_path = _existing_nifti(label_dirs[case] / f"{case}{FILE_ENDING}")
        label = map_labels(read_source(label_path, "label"), label_path, WORD_REMAP, "WORD label")
        scribble, scribble_path = None, None
        if case in training:
            scribble_path = _existing_nifti(src / "scribblesTr" / f"{case}{FILE_ENDING}")
            scribble = map_labels(read_source(scribble_path, "scribble"), scribble_path, scribble_lookup,
                                  "WORD scribble")
        require_same_grid([image, label] + ([scribble] if scribble else []),
                          [owner[case], label_path] + ([scribble_path] if scribble_path else []), "")
        return CaseVolumes(case, [image], label, scribble, {"part": next(p for p in parts if case in parts[p])}), \
            label_path, scribble_path

    splits = [{part: parts[part] for part in ("train", "val", "test")}]
    protocol = {"kind": "fixed", "source": "WORD release folders imagesTr/imagesVal/imagesTs"}
    return _import_cases(args, channels=["CT"], labels=WORD_LABELS, kinds=["ct"],
                         cases=sorted(owner), load=load, splits=splits, protocol=protocol,
                         source={"importer": "word", "path": str(src)},
                         label_remap={"from": "WORD release ids", "map": WORD_REMAP, "as": "DMSPS"})


def _existing_nifti(path: Path) -> Path:
    """``x.nii.gz``, or ``x.nii`` where only the uncompressed file exists."""
    plain = path.with_name(path.name.removesuffix(".gz"))
    return plain if not path.is_file() and plain.is_file() else path


# -- BraTS ----------------------------------------------------------------------------------------
BRATS_MODALITIES = {"t1": "T1", "t1c": "T1c", "t1ce": "T1c", "t1gd": "T1c", "t2": "T2", "flair": "FLAIR"}
# file tokens per layout: 2019/2020 "<case>/<case>_<token>.nii.gz"; 2015 DeepMedic "<Token>_subtrMeanDivStd.nii.gz"
BRATS_TOKENS = {"2019": {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair"},
                "2015": {"T1": "T1", "T1c": "T1c", "T2": "T2", "FLAIR": "Flair"}}
# BraTS labels (2015: 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing; 2019/20: 1 NCR/NET,
# 2 edema, 4 enhancing) as nested regions WT = {1,2,3,4}, TC = {1,3,4}, ET = {4}.
BRATS_WHOLE = ({"background": 0, "tumour": 1}, {0: 0, 1: 1, 2: 1, 3: 1, 4: 1})
# Regions as mutually exclusive classes: 1 = WT minus TC (edema), 2 = TC minus ET (necrotic and
# non-enhancing core), 3 = ET; so WT = {1,2,3}, TC = {2,3}, ET = {3}.
BRATS_REGIONS = ({"background": 0, "edema": 1, "core_non_enhancing": 2, "enhancing": 3},
                 {0: 0, 2: 1, 1: 2, 3: 2, 4: 3})


def _brats_layout(folder: Path) -> str | None:
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if any(re.fullmatch(rf"{re.escape(folder.name)}_(t1|t1ce|t2|flair|seg)\.nii(\.gz)?", n) for n in names):
        return "2019"
    if any(re.fullmatch(r"(T1|T1c|T2|Flair)_subtrMeanDivStd\.nii(\.gz)?|OTMultiClass\.nii(\.gz)?", n) for n in names):
        return "2015"
    return None


def _brats_paths(folder: Path, layout: str, modalities: list[str]) -> tuple[list[Path], Path]:
    if layout == "2019":
        images = [folder / f"{folder.name}_{BRATS_TOKENS[layout][m]}{FILE_ENDING}" for m in modalities]
        label = folder / f"{folder.name}_seg{FILE_ENDING}"
    else:
        images = [folder / f"{BRATS_TOKENS[layout][m]}_subtrMeanDivStd{FILE_ENDING}" for m in modalities]
        label = folder / f"OTMultiClass{FILE_ENDING}"
    return [_existing_nifti(p) for p in images], _existing_nifti(label)


def run_brats(args: argparse.Namespace) -> int:
    src = Path(args.src)
    if not src.is_dir():
        raise InputError(src, "not a directory")
    modalities = []
    for token in args.modalities.split(","):
        name = BRATS_MODALITIES.get(token.strip().lower())
        if name is None:
            raise InputError("--modalities", f"unknown sequence '{token}' (known: {', '.join(BRATS_MODALITIES)})")
        if name in modalities:
            raise InputError("--modalities", f"sequence {name} given twice")
        modalities.append(name)
    if len(modalities) < 2:
        raise InputError("--modalities", "give two or more sequences, e.g. flair,t1c")
    folders: dict[str, Path] = {}
    layouts = {}
    for folder in sorted(p for p in [src, *src.rglob("*")] if p.is_dir()):
        layout = _brats_layout(folder)
        if layout is None:
            continue
        case = check_case_id(folder.name, folder)
        if case in folders:
            raise InputError(folder, f"duplicate case id '{case}' (also {folders[case]})")
        folders[case], layouts[case] = folder, layout
    if not folders:
        raise InputError(src, "no BraTS case folders (<case>/<case>_flair.nii.gz ... or "
                              "<case>/Flair_subtrMeanDivStd.nii.gz ...)")
    if len(set(layouts.values())) > 1:
        raise InputError(src, "mixes BraTS-2015 (pre-normalised) and 2019/2020 case folders; import them separately")
    layout = next(iter(layouts.values()))
    labels, lookup = BRATS_REGIONS if args.label_set == "regions" else BRATS_WHOLE
    cases = sorted(folders)
    splits, protocol = cross_validation(cases, args.folds, args.seed, args.val_from_train, src)

    def load(case: str) -> tuple[CaseVolumes, Path, Path | None]:
        image_paths, label_path = _brats_paths(folders[case], layout, modalities)
        images = [read_source(p, f"modality '{m}'") for p, m in zip(image_paths, modalities, strict=True)]
        label = map_labels(read_source(label_path, "label"), label_path, lookup, "BraTS label (0-4)")
        require_same_grid(images + [label], image_paths + [label_path], "")
        return CaseVolumes(case, images, label, None, {"layout": layout}), label_path, None

    # BraTS-2015 DeepMedic files are already z-scored inside the brain: declared 'none'.
    kinds = ["none" if layout == "2015" else "mr"] * len(modalities)
    extra: dict[str, Any] = {"label_remap": {"from": "BraTS labels 0-4", "map": lookup}}
    if args.label_set == "regions":
        extra["regions"] = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    return _import_cases(args, channels=modalities, labels=labels, kinds=kinds, cases=cases,
                         load=load, splits=splits, protocol=protocol,
                         source={"importer": "brats", "path": str(src), "layout": layout}, **extra)


# -- ACDC (WSL4MIS HDF5 volumes) ------------------------------------------------------------------
ACDC_LABELS = {"background": 0, "RV": 1, "myocardium": 2, "LV": 3}
ACDC_UNLABELLED = 4  # WSL4MIS trains with ignore_index=4


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


def run_acdc(args: argparse.Namespace) -> int:
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
    scribble_lookup = {0: 0, 1: 1, 2: 2, 3: 3, ACDC_UNLABELLED: IGNORE}

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
            scribble = map_labels(volume(data["scribble"], path, "scribble"), path, scribble_lookup,
                                  "scribble (0-3, 4 = unlabelled)")
        return CaseVolumes(case, [image], label, scribble, {"source": str(path)}), path, path

    # WSL4MIS stores images clipped at the 99th percentile and min-max scaled: declared 'none'.
    return _import_cases(args, channels=["MR"], labels=ACDC_LABELS, kinds=["none"],
                         cases=sorted(files), load=load, splits=splits, protocol=protocol,
                         source={"importer": "acdc", "path": str(src), "spacing_given": list(args.spacing)},
                         case_groups=groups)


# -- nnU-Net raw dataset --------------------------------------------------------------------------
def _nnunet_labels(meta_path: Path, meta: dict[str, Any]) -> dict[str, int]:
    labels = meta.get("labels")
    if isinstance(labels, dict) and labels and all(k.isdigit() and isinstance(v, str) for k, v in labels.items()):
        labels = {name: int(value) for value, name in labels.items()}  # nnU-Net v1: {"0": "background"}
    if not isinstance(labels, dict):
        raise InputError(meta_path, "missing 'labels'")
    if "ignore" in labels:
        raise InputError(meta_path, "has an 'ignore' label (sparse annotations): import dense labels; scribbles "
                                    "belong in scribblesTr/<variant>/")
    for name, value in labels.items():
        if isinstance(value, list):
            raise InputError(meta_path, f"label '{name}' is region-based ({value}): not supported; give one id "
                                        "per class")
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(meta_path, f"label '{name}' has value {json.dumps(value)}, not an integer id")
    if sorted(labels.values()) != list(range(len(labels))) or labels.get("background") != 0:
        raise InputError(meta_path, f"labels must be consecutive ids 0..K with background = 0, got {labels}")
    return {name: int(v) for name, v in labels.items()}


def _nnunet_kind(hint: str) -> str:
    """nnU-Net's channel_names are normalisation hints: 'CT' and 'noNorm' map to ours, the rest z-score."""
    return {"ct": "ct", "nonorm": "none"}.get(hint.lower(), "mr")


def _nnunet_splits(path: Path, cases: list[str], seed: int,
                   val_from_train: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """nnU-Net folds ({train, val}, val = the held-out fold) as ours: nnU-Net's val becomes our test
    and our validation cases are drawn from its training part."""
    folds = read_json(path)
    if not isinstance(folds, list) or not folds or not all(isinstance(f, dict) and "val" in f and "train" in f
                                                          for f in folds):
        raise InputError(path, "expected a list of {\"train\": [...], \"val\": [...]} folds")
    held_out = [c for fold in folds for c in fold["val"]]
    unknown = sorted((set(held_out) | {c for f in folds for c in f["train"]}) - set(cases))
    if unknown:
        raise InputError(path, f"cases not in imagesTr/labelsTr: {unknown[:5]}")
    if sorted(held_out) != sorted(cases):
        raise InputError(path, "the folds' 'val' parts must hold every case exactly once (cross-validation)")
    for k, fold in enumerate(folds):
        if set(fold["train"]) != set(cases) - set(fold["val"]):
            raise InputError(path, f"fold {k}: 'train' is not the complement of 'val'")
    splits = splits_from_test_parts([sorted(f["val"]) for f in folds], sorted(cases), seed, {}, val_from_train, path)
    protocol = {"kind": "kfold", "folds": len(folds), "source": "splits_final.json (nnU-Net val = our test)",
                "seed": seed, "val_fraction": VAL_FRACTION,
                VAL_FROM_TRAIN: any(s.get(VAL_FROM_TRAIN) for s in splits)}
    return splits, protocol


def run_nnunet(args: argparse.Namespace) -> int:
    src = Path(args.src)
    meta_path = src / "dataset.json"
    meta = read_json(meta_path)
    names = meta.get("channel_names") or meta.get("modality")
    if not isinstance(names, dict) or sorted(names) != [str(i) for i in range(len(names))]:
        raise InputError(meta_path, "missing or malformed 'channel_names' ({\"0\": \"CT\", ...})")
    hints = [str(names[str(i)]) for i in range(len(names))]
    labels = _nnunet_labels(meta_path, meta)
    ending = str(meta.get("file_ending", FILE_ENDING))
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    cases = sorted({m.group(1) for p in (src / "imagesTr").glob(f"*{ending}") if (m := pattern.match(p.name))})
    if not cases:
        raise InputError(src / "imagesTr", f"no images named <case>_0000{ending}")
    for case in cases:
        check_case_id(case, src / "imagesTr" / f"{case}_0000{ending}")
    splits_path = src / "splits_final.json"
    if splits_path.is_file():
        splits, protocol = _nnunet_splits(splits_path, cases, args.seed, args.val_from_train)
    else:
        splits, protocol = cross_validation(cases, args.folds, args.seed, args.val_from_train, src)

    def load(case: str) -> tuple[CaseVolumes, Path, Path | None]:
        paths = [src / "imagesTr" / f"{case}_{c:04d}{ending}" for c in range(len(hints))]
        images = [read_source(p, f"modality '{hints[c]}' of case {case}") for c, p in enumerate(paths)]
        label_path = src / "labelsTr" / f"{case}{ending}"
        label = map_labels(read_source(label_path, "label"), label_path, identity_lookup(len(labels), False), "label")
        require_same_grid(images + [label], paths + [label_path], "")
        return CaseVolumes(case, images, label, None, {}), label_path, None

    channels = list(hints)
    if len(set(channels)) != len(channels):
        channels = [f"{h}{i}" for i, h in enumerate(hints)]
    return _import_cases(args, channels=channels, labels=labels,
                         kinds=[_nnunet_kind(h) for h in hints], cases=cases, load=load, splits=splits,
                         protocol=protocol, source={"importer": "nnunet", "path": str(src)})


# -- command line ---------------------------------------------------------------------------------
def _common_options(paired: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--name", help="dataset name (default: the --out folder's name)")
    splits = parser.add_argument_group("splits (when the data defines none)")
    splits.add_argument("--folds", type=int, default=None if paired else 5,
                        help="k-fold cross-validation (default 5; at most one fold per case)")
    splits.add_argument("--seed", type=int, default=None if paired else DEFAULT_SEED, help="split seed (default 12345)")
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
    if not paired:
        parser.add_argument("--force", action="store_true",
                            help="replace an existing dataset at --out, its scribbles included")
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("import", help="import real data into the dataset format",
                                   description=__doc__.split("\n\n")[0] if __doc__ else None)
    formats = parser.add_subparsers(dest="importer", required=True, metavar="FORMAT")
    common, common_paired = _common_options(False), _common_options(True)

    paired = formats.add_parser("paired", parents=[common_paired],
                                help="add one case of co-acquired modalities (e.g. NPC CT + MR)")
    paired.add_argument("--case", required=True, help="case id (must be new in the dataset)")
    paired.add_argument("--image", action="append", required=True, metavar="FILE",
                        help="one modality; repeat; the first defines the grid")
    paired.add_argument("--label", required=True, metavar="FILE", help="dense label, in the first image's space")
    paired.add_argument("--scribble", metavar="FILE", help="scribble (0 bg, k class, 255 unlabelled)")
    paired.add_argument("--scribble-variant", default=GIVEN, help="scribblesTr/<variant> (default given)")
    paired.add_argument("--channel-names", help="e.g. CT,MR (required for a new dataset)")
    paired.add_argument("--labels", help="e.g. background=0,tumour=1, or a labels JSON file "
                                         "({\"background\": 0, \"tumour\": 1}) (required for a new dataset)")
    how = paired.add_mutually_exclusive_group()
    how.add_argument("--no-resample", action="store_true", help="refuse modalities on different grids")
    how.add_argument("--register", action="store_true",
                     help="rigidly align each modality to the first (MI), kept only if it improves MI; "
                          "without it the scanner geometry is trusted (series sharing a frame of reference)")
    paired.set_defaults(func=run_paired)

    word = formats.add_parser("word", parents=[common], help="the WORD release (fixed 100/20/30 split)")
    word.add_argument("--src", required=True, type=Path, help="folder with imagesTr, imagesVal, imagesTs, ...")
    word.set_defaults(func=run_word)

    brats = formats.add_parser("brats", parents=[common], help="BraTS 2019/2020 or the BraTS-2015 DeepMedic layout")
    brats.add_argument("--src", required=True, type=Path)
    brats.add_argument("--modalities", required=True, help="two or more of t1,t1c (t1ce),t2,flair")
    brats.add_argument("--label-set", choices=("whole", "regions"), default="whole",
                       help="whole tumour (label > 0), or regions: 1 edema (WT-TC), 2 non-enhancing core "
                            "(TC-ET), 3 enhancing (ET)")
    brats.set_defaults(func=run_brats)

    acdc = formats.add_parser("acdc", parents=[common], help="ACDC HDF5 volumes with scribbles (WSL4MIS)")
    acdc.add_argument("--src", required=True, type=Path)
    acdc.add_argument("--spacing", required=True, type=float, nargs=3, metavar=("Z", "Y", "X"),
                      help="voxel spacing in mm (the files do not store it)")
    acdc.set_defaults(func=run_acdc)

    nnunet = formats.add_parser("nnunet", parents=[common], help="an nnU-Net raw dataset")
    nnunet.add_argument("--src", required=True, type=Path, help="DatasetXXX_Name folder")
    nnunet.set_defaults(func=run_nnunet)
