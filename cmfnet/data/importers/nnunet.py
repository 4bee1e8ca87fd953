"""``cmfnet import nnunet``: an nnU-Net raw dataset (``DatasetXXX_Name``), its ``splits_final.json`` if any."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from cmfnet.errors import InputError
from cmfnet.data.importers.common import (Importer, check_case_id, identity_lookup, import_cases,
                                     map_labels, read_source, require_same_grid)
from cmfnet.data.io import FILE_ENDING, read_json
from cmfnet.data.preprocess import CaseVolumes
from cmfnet.data.splits import cross_validation, given_test_parts


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
    return given_test_parts([sorted(f["val"]) for f in folds], cases, seed, val_from_train, path,
                            "splits_final.json (nnU-Net val = our test)")


def run(args: argparse.Namespace) -> int:
    """Import the nnU-Net raw dataset at ``--src``; its channel names choose each normalisation."""
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
    return import_cases(args, channels=channels, labels=labels,
                         kinds=[_nnunet_kind(h) for h in hints], cases=cases, load=load, splits=splits,
                         protocol=protocol, source={"importer": "nnunet", "path": str(src)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, type=Path, help="DatasetXXX_Name folder")


IMPORTER = Importer("nnunet", "an nnU-Net raw dataset", add_arguments, run)
