"""``cmfnet import paired``: one case of co-acquired modalities (e.g. NPC CT + MR) at a time, aligned
onto the first image's grid; the dataset's splits are recomputed with every case."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from cmfnet.errors import InputError
from cmfnet.data.importers.common import (GIVEN, DatasetBuilder, Importer, check_case_id, clean_leftovers,
                                     config_from_args, identity_lookup, map_labels, normalization_from_args,
                                     read_source, refuse_foreign_out, require_same_grid, scribble_lookup, summary,
                                     UNLABELLED_CONVENTIONS)
from cmfnet.data.io import IGNORE, atomic_dir, counted, read_json
from cmfnet.data.dataset import read_dataset_json
from cmfnet.data.preprocess import (CaseVolumes, PreprocessConfig, labelled_outside, outside_value, register_rigid,
                               resample_onto)
from cmfnet.data.splits import DEFAULT_SEED, cross_validation


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


def run(args: argparse.Namespace) -> int:
    """Add one case to the dataset at ``--out`` (created by the first case), then recompute its splits."""
    out = Path(args.out)
    meta_path = out / "dataset.json"
    clean_leftovers(out)
    refuse_foreign_out(out)
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
        config = config_from_args(args)
        kinds = [channel_kind(c) for c in channels]
        normalization = normalization_from_args(channels, kinds, args)
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
                              scribble_lookup(len(labels), args.scribble_unlabelled), "scribble")
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
    print(summary(out, meta))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", required=True, help="case id (must be new in the dataset)")
    parser.add_argument("--image", action="append", required=True, metavar="FILE",
                        help="one modality; repeat; the first defines the grid")
    parser.add_argument("--label", required=True, metavar="FILE", help="dense label, in the first image's space")
    parser.add_argument("--scribble", metavar="FILE", help="scribble (0 bg, k class; unlabelled: see below)")
    parser.add_argument("--scribble-unlabelled", choices=sorted(UNLABELLED_CONVENTIONS), default="255",
                        help="the scribble's unlabelled value: 255 (cmfnet, WORD) or highest, the number of "
                             "classes (WSL4MIS's 4 on ACDC, nnU-Net's ignore label); stored as 255")
    parser.add_argument("--scribble-variant", default=GIVEN, help="scribblesTr/<variant> (default given)")
    parser.add_argument("--channel-names", help="e.g. CT,MR (required for a new dataset)")
    parser.add_argument("--labels", help="e.g. background=0,tumour=1, or a labels JSON file "
                                         "({\"background\": 0, \"tumour\": 1}) (required for a new dataset)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--no-resample", action="store_true", help="refuse modalities on different grids")
    how.add_argument("--register", action="store_true",
                     help="rigidly align each modality to the first (MI), kept only if it improves MI; "
                          "without it the scanner geometry is trusted (series sharing a frame of reference)")


IMPORTER = Importer("paired", "add one case of co-acquired modalities (e.g. NPC CT + MR)", add_arguments, run,
                    adds_cases=True)
