"""``cmfnet import word``: the WORD release, its fixed 100/20/30 split and the DMSPS label remap."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from cmfnet.errors import InputError
from cmfnet.data.importers.common import (Importer, check_case_id, existing_nifti, import_cases, map_labels,
                                     read_source, require_same_grid)
from cmfnet.data.io import FILE_ENDING, IGNORE
from cmfnet.data.preprocess import CaseVolumes


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


def run(args: argparse.Namespace) -> int:
    """Import the WORD release at ``--src``: its folders are the split, its ids remapped as DMSPS does."""
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
        label_path = existing_nifti(label_dirs[case] / f"{case}{FILE_ENDING}")
        label = map_labels(read_source(label_path, "label"), label_path, WORD_REMAP, "WORD label")
        scribble, scribble_path = None, None
        if case in training:
            scribble_path = existing_nifti(src / "scribblesTr" / f"{case}{FILE_ENDING}")
            scribble = map_labels(read_source(scribble_path, "scribble"), scribble_path, scribble_lookup,
                                  "WORD scribble")
        require_same_grid([image, label] + ([scribble] if scribble else []),
                          [owner[case], label_path] + ([scribble_path] if scribble_path else []), "")
        return CaseVolumes(case, [image], label, scribble, {"part": next(p for p in parts if case in parts[p])}), \
            label_path, scribble_path

    splits = [{part: parts[part] for part in ("train", "val", "test")}]
    protocol = {"kind": "fixed", "source": "WORD release folders imagesTr/imagesVal/imagesTs"}
    return import_cases(args, channels=["CT"], labels=WORD_LABELS, kinds=["ct"],
                         cases=sorted(owner), load=load, splits=splits, protocol=protocol,
                         source={"importer": "word", "path": str(src)},
                         label_remap={"from": "WORD release ids", "map": WORD_REMAP, "as": "DMSPS"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, type=Path, help="folder with imagesTr, imagesVal, imagesTs, ...")


IMPORTER = Importer("word", "the WORD release (fixed 100/20/30 split)", add_arguments, run)
