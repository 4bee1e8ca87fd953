"""``cmfnet synth``: write an embedded synthetic dataset, the suite's default data.

The phantoms themselves (what makes them stand-ins for the paper's NPC and WORD data, their
geometry and random streams) are in :mod:`cmfnet.data.phantoms`. Here: the dataset folder,
written atomically, its ``dataset.json`` with splits and normalisation, and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmfnet import __version__
from cmfnet.data.dataset import make_dataset_json
from cmfnet.data.io import Geometry, atomic_dir, counted, recover_leftovers, write_image, write_json
from cmfnet.data.phantoms import KINDS, case_rng, kind_spec, spacing_for
from cmfnet.data.splits import synth_splits
from cmfnet.errors import InputError

GENERATOR = "cmfnet synth"
MIN_SHAPE = (8, 32, 32)
CT_SOFT_TISSUE_WINDOW = [-160, 240]  # level 40, width 400 HU: keeps the few-HU tumour contrast
# statistics over the body: a whole-volume z-score moved muscle by 0.12 SD from case to case with
# the share of air in the field of view (0.07 over the body; docs/protocol.md, protocol 4)
MR_NORMALIZATION = {"scheme": "zscore", "clip_percentiles": [0.5, 99.5], "mask": "body"}
MARKER = ".cmfnet-synth"


def _check_out(out: Path) -> None:
    """Refuse to replace anything but an earlier synthetic dataset: atomic_dir swaps whole folders."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if (out / MARKER).is_file():  # dataset.json may be gone: Snakemake deletes outputs before a rerun
            return
        try:
            provenance = json.loads((out / "dataset.json").read_text()).get("provenance", {})
        except (OSError, ValueError, AttributeError):
            provenance = {}
        if not isinstance(provenance, dict) or provenance.get("generator") != GENERATOR:
            raise InputError(out, "exists and is not a dataset made by 'cmfnet synth'; "
                                  "refusing to replace it")


def synthesize(kind: str, n_cases: int, out: Path, seed: int = 0,
               shape: tuple[int, int, int] | None = None, folds: int = 5) -> Path:
    """Write a complete synthetic dataset folder (images, labels, dataset.json) atomically.

    ``folds`` applies to ``npc`` (k-fold cross-validation); ``word`` uses WORD's fixed split.
    """
    spec = kind_spec(kind)
    shape = tuple(int(n) for n in (shape or spec.default_shape))  # type: ignore[assignment]
    if len(shape) != 3 or any(n < m for n, m in zip(shape, MIN_SHAPE)):
        raise InputError("--shape", f"expected three sizes Z Y X of at least {MIN_SHAPE}, got {shape}")
    if n_cases < 1:
        raise InputError("--cases", f"expected a positive number of cases, got {n_cases}")
    out = Path(out)
    for note in recover_leftovers(out):
        print(f"note: {note}", file=sys.stderr)
    _check_out(out)
    spacing = spacing_for(kind, shape)
    width = max(3, len(str(n_cases - 1)))
    cases = [f"{kind}_{i:0{width}d}" for i in range(n_cases)]
    splits = synth_splits(kind, cases, folds)
    geometry = Geometry.default(shape, spacing)
    normalization = {"CT": {"scheme": "ct", "window": list(CT_SOFT_TISSUE_WINDOW)}}
    if "MR" in spec.channels:
        normalization["MR"] = dict(MR_NORMALIZATION)
    meta = make_dataset_json(
        f"synth_{kind}", list(spec.channels), spec.labels, cases, spacing, splits,
        description=spec.description,
        orientation="LPS: x index towards patient left, y towards posterior, z towards superior",
        normalization=normalization,
        provenance={"generator": GENERATOR, "kind": kind, "seed": int(seed),
                    "shape": list(shape), "cmfnet_version": __version__})
    with atomic_dir(out) as tmp:
        for index, case in enumerate(cases):
            arrays = spec.generator(case_rng(kind, seed, index), shape, spacing)  # type: ignore[arg-type]
            for channel, name in enumerate(spec.channels):
                write_image(arrays[name], tmp / "imagesTr" / f"{case}_{channel:04d}.nii.gz", geometry)
            write_image(arrays["label"], tmp / "labelsTr" / f"{case}.nii.gz", geometry)
        write_json(meta, tmp / "dataset.json")
        (tmp / MARKER).write_text("made by cmfnet synth; safe for cmfnet synth to replace\n")
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="write an embedded synthetic dataset (npc: CT+MR tumour, word: abdominal CT)",
        description="Write a synthetic dataset in the suite's format: paired CT+MR nasopharyngeal "
                    "tumour phantoms (npc) or abdominal CT organ phantoms (word).")
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument("--cases", required=True, type=int, metavar="N", help="number of cases")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="grid size; the field of view is fixed, so this sets the spacing "
                             "(default npc 32 128 128, word 40 128 128)")
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="cross-validation folds, npc only (default 5); word uses its 100/20/30 split")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if kind_spec(args.kind).fixed_split and args.folds is not None:
        raise InputError("--folds", "word uses WORD's fixed train/val/test split; "
                                    "--folds applies to npc only")
    out = synthesize(args.kind, args.cases, args.out, seed=args.seed,
                     shape=tuple(args.shape) if args.shape else None,
                     folds=args.folds if args.folds is not None else 5)
    spec = KINDS[args.kind]
    shape = tuple(args.shape) if args.shape else spec.default_shape
    spacing = spacing_for(args.kind, shape)
    print(f"synth {args.kind}: {counted(args.cases, 'case')} -> {out} | channels {', '.join(spec.channels)} | "
          f"classes {', '.join(spec.labels)} | spacing {' x '.join(f'{v:g}' for v in spacing)} mm "
          f"(z y x) | shape {' x '.join(str(n) for n in shape)}")
    return 0
