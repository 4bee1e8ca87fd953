"""``cmfnet import brats``: BraTS 2019/2020 case folders or the BraTS-2015 DeepMedic layout."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from cmfnet.errors import InputError
from cmfnet.data.importers.common import (Importer, check_case_id, existing_nifti, import_cases, map_labels,
                                     read_source, require_same_grid)
from cmfnet.data.io import FILE_ENDING
from cmfnet.data.preprocess import CaseVolumes
from cmfnet.data.splits import cross_validation


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
    return [existing_nifti(p) for p in images], existing_nifti(label)


def run(args: argparse.Namespace) -> int:
    """Import every BraTS case folder under ``--src`` with the chosen sequences and label set."""
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
    return import_cases(args, channels=modalities, labels=labels, kinds=kinds, cases=cases,
                         load=load, splits=splits, protocol=protocol,
                         source={"importer": "brats", "path": str(src), "layout": layout}, **extra)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, type=Path)
    parser.add_argument("--modalities", required=True, help="two or more of t1,t1c (t1ce),t2,flair")
    parser.add_argument("--label-set", choices=("whole", "regions"), default="whole",
                        help="whole tumour (label > 0), or regions: 1 edema (WT-TC), 2 non-enhancing core "
                             "(TC-ET), 3 enhancing (ET)")


IMPORTER = Importer("brats", "BraTS 2019/2020 or the BraTS-2015 DeepMedic layout", add_arguments, run)
