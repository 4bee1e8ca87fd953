"""``cmfnet predict``: segment a fold's test cases, or a new patient's images, with a trained model.

It checks every value and output path before any work, writes each segmentation atomically on its
own (never replacing or deleting anything else in ``--out``), predicts at the model's training
spacing, and reports progress at intervals when stderr is not a terminal. The sliding window
itself is :mod:`cmfnet.training.sliding_window`, which validation shares.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from cmfnet.data.io import FILE_ENDING, GRID_TOLERANCE, Geometry, counted, read_image, write_image
from cmfnet.data.dataset import Dataset
from cmfnet.data.preprocess import resample_to_spacing
from cmfnet.errors import InputError
from cmfnet.training.device import add_threads_argument, resolve_device, set_cpu_threads
from cmfnet.training.model import TrainedModel
from cmfnet.training.sliding_window import reporting_progress

# seconds between progress lines when stderr is not a terminal (Snakemake and SLURM logs)
PROGRESS_INTERVAL_S = 10.0
# an image within this relative difference of the model's spacing on every axis is predicted as
# it is: training itself saw cases of somewhat different spacings at their own resolution
SPACING_RTOL = 0.1


def log(message: str) -> None:
    """One line on stderr that does not break a progress bar on a terminal."""
    if sys.stderr.isatty():
        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def _mm(spacing: tuple[float, ...] | list[float]) -> str:
    return " x ".join(f"{s:.4g}" for s in spacing) + " mm"


class WindowProgress:
    """Sliding-window progress of one case: a bar on a terminal, else a line every
    :data:`PROGRESS_INTERVAL_S` seconds, so a log file shows that a long prediction advances."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = self.last_line = time.monotonic()
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.label, unit="window", leave=False)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if now - self.last_line >= PROGRESS_INTERVAL_S:
            self.last_line = now
            log(f"{self.label}: {done}/{total} windows, {now - self.started:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_overlap(overlap: float) -> None:
    """Overlap 1 would give a stride of one voxel (one window per voxel: effectively a hang)."""
    if not 0 <= overlap < 1:
        raise InputError("--overlap", f"must be at least 0 and below 1, got {overlap}")


def _check_image_file(path: Path) -> None:
    if path.is_dir():
        raise InputError(path, "is a folder, not an image file")
    if not path.is_file():
        raise InputError(path, "file not found")


def _check_can_write_into(folder: Path, output: Path) -> None:
    """Refuse, before any work, an ``output`` whose ``folder`` cannot be created or written."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(existing, f"is a file, so {output} cannot be written")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(existing, "folder is not writable")


def _check_prediction_folder(out_dir: Path, dataset: Dataset) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, f"is a file; with --dataset, --out is a folder for the {{case}}{FILE_ENDING} files")
    target = out_dir.resolve()
    for kept in (dataset.root / "labelsTr", dataset.root / "scribblesTr"):
        if target == kept.resolve() or kept.resolve() in target.parents:
            raise InputError(out_dir, f"is inside the dataset's {kept.name}; predictions would overwrite its files")
    _check_can_write_into(out_dir, out_dir)


def _check_segmentation_path(out: Path, images: list[Path]) -> None:
    if out.is_dir():
        raise InputError(out, f"is a folder; with --image, --out names the segmentation file (e.g. seg{FILE_ENDING})")
    if not out.name.endswith((FILE_ENDING, ".nii")):
        raise InputError(out, f"the segmentation file name must end in {FILE_ENDING} (or .nii)")
    if any(out.resolve() == image.resolve() for image in images):
        raise InputError(out, "is one of the input images; choose another output name")
    _check_can_write_into(out.parent, out)


def _note_overwrites(paths: list[Path]) -> None:
    existing = [p for p in paths if p.exists()]
    if existing:
        shown = ", ".join(p.name for p in existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        log(f"note: overwriting {counted(len(existing), 'existing file')} in {existing[0].parent}: {shown}")


def _differs_from_model(spacing: tuple[float, ...] | list[float], model_spacing: list[float]) -> bool:
    return len(spacing) != len(model_spacing) or not np.allclose(spacing, model_spacing, rtol=SPACING_RTOL, atol=0)


def segment_at_model_spacing(trained: TrainedModel, image: np.ndarray, geometry: Geometry,
                             device: torch.device, overlap: float) -> np.ndarray:
    """Labels on ``geometry``'s grid, predicted at the model's training spacing.

    A network sees structures at the voxel size it was trained on, so the channels are resampled
    (linear) to that spacing, segmented there, and the labels resampled back (nearest neighbour).
    """
    channels = [geometry.apply(sitk.GetImageFromArray(channel)) for channel in image]
    resampled = [resample_to_spacing(channel, tuple(trained.meta["spacing"]), labelmap=False,
                                     default=float(array.min()))
                 for channel, array in zip(channels, image)]
    labels = trained.segment(np.stack([sitk.GetArrayFromImage(r) for r in resampled]), device=device,
                             overlap=overlap)
    on_model_grid = Geometry.of(resampled[0]).apply(sitk.GetImageFromArray(labels))
    return sitk.GetArrayFromImage(labels_onto(on_model_grid, channels[0]))


def labels_onto(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of a label map onto ``reference``'s grid. Input voxels up to half
    a model voxel beyond the model grid's outermost centres take the nearest label, not background."""
    return sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0,
                         labels.GetPixelID(), True)


def _segment_case(trained: TrainedModel, image: np.ndarray, geometry: Geometry, device: torch.device,
                  overlap: float, label: str, resample: bool) -> np.ndarray:
    progress = WindowProgress(label)
    try:
        with reporting_progress(progress):
            if resample:
                return segment_at_model_spacing(trained, image, geometry, device, overlap)
            return trained.segment(image, device=device, overlap=overlap, spacing=geometry.spacing)
    finally:
        progress.close()


def _cases_to_predict(dataset: Dataset, fold: int, cases: list[str] | None) -> list[str]:
    if cases is None:
        cases = dataset.split(fold)["test"]
        if not cases:
            raise InputError(dataset.root / "dataset.json", f"fold {fold} has no test cases; choose some with --cases")
    cases = list(dict.fromkeys(cases))
    known = set(dataset.cases)
    unknown = [c for c in cases if c not in known]
    if unknown:
        raise InputError("--cases", f"{'unknown case id' if len(unknown) == 1 else 'unknown case ids'} "
                                    f"{', '.join(unknown[:5])}: not in {dataset.root / 'dataset.json'}")
    return cases


def predict_dataset(model_dir: Path, dataset_dir: Path, out_dir: Path, cases: list[str] | None = None,
                    device: str = "auto", overlap: float = 0.5, overrides: list[str] | None = None) -> list[str]:
    """Segment a fold's test cases (or ``cases``) of a dataset into ``out_dir/{case}.nii.gz``.

    Each file is written atomically on its own; nothing else in ``out_dir`` is touched, so folds or
    a user's files can share the folder.
    """
    check_overlap(overlap)
    torch_device = resolve_device(device)
    trained = TrainedModel.load(model_dir, overrides or ())
    dataset = Dataset(dataset_dir)
    trained.check_dataset(dataset)
    cases = _cases_to_predict(dataset, trained.fold, cases)
    _check_prediction_folder(out_dir, dataset)
    for case in cases:
        for path in dataset.image_paths(case):
            _check_image_file(path)
    model_spacing = None if trained.resamples_itself else trained.meta.get("spacing")
    resample = model_spacing is not None and "spacing" in dataset.meta \
        and _differs_from_model(dataset.meta["spacing"], model_spacing)
    if resample:
        log(f"warning: {dataset.root}: spacing {_mm(dataset.meta['spacing'])} (z, y, x) differs from the "
            f"model's {_mm(model_spacing)}; cases are resampled to the model's spacing and their "
            f"segmentations back onto each case's grid")
    outputs = [out_dir / f"{case}{FILE_ENDING}" for case in cases]
    out_dir.mkdir(parents=True, exist_ok=True)
    _note_overwrites(outputs)
    started = time.monotonic()
    for index, (case, output) in enumerate(zip(cases, outputs), 1):
        image, geometry = dataset.load_image(case)
        labels = _segment_case(trained, image, geometry, torch_device, overlap, f"{case} ({index}/{len(cases)})",
                               resample and _differs_from_model(geometry.spacing, model_spacing))
        write_image(labels, output, geometry)
        log(f"predicted {case} ({index}/{len(cases)}), {time.monotonic() - started:.0f} s")
    return cases


def _read_patient(images: list[Path], channel_names: list[str]) -> tuple[np.ndarray, Geometry]:
    """One 3D image per channel, all on the first one's grid, as a (C, z, y, x) float32 array."""
    arrays, first = [], None
    for path in images:
        array, geometry = read_image(path)
        if array.ndim != 3:
            raise InputError(path, f"is a {array.ndim}D image (shape {array.shape}); give each channel "
                                   f"({', '.join(channel_names)}) as its own 3D image")
        if first is None:
            first = geometry
        elif not geometry.same_grid(first):
            raise InputError(path, f"not on the grid of {images[0]} ({_grid_difference(geometry, first)}); "
                                   f"resample it onto that grid first (cmfnet import paired does that)")
        arrays.append(array.astype(np.float32, copy=False))
    assert first is not None
    return np.stack(arrays), first


def _grid_difference(geometry: Geometry, reference: Geometry) -> str:
    """Which property of two grids differs, with both values."""
    if geometry.shape != reference.shape:
        return f"shape {geometry.shape} vs {reference.shape}"
    if not np.allclose(geometry.spacing, reference.spacing, atol=GRID_TOLERANCE):
        return f"spacing {_mm(geometry.spacing)} vs {_mm(reference.spacing)}"
    if not np.allclose(geometry.origin, reference.origin, atol=GRID_TOLERANCE * 10):
        return f"origin {np.round(geometry.origin, 2).tolist()} vs {np.round(reference.origin, 2).tolist()} mm"
    return "orientation (direction cosines)"


def predict_files(model_dir: Path, images: list[Path], out: Path, device: str = "auto",
                  overlap: float = 0.5, overrides: list[str] | None = None) -> None:
    """Segment one new patient given as one file per channel, in the model's channel order.

    The segmentation lies on the first image's grid, whatever spacing the model was trained at.
    """

    check_overlap(overlap)
    torch_device = resolve_device(device)
    if not images:
        raise InputError("--image", "give one --image per channel of the model")
    for path in images:
        _check_image_file(path)
    _check_segmentation_path(out, images)
    trained = TrainedModel.load(model_dir, overrides or ())
    names = trained.channel_names
    if len(images) != len(names):
        raise InputError(images[0], f"the model expects {counted(len(names), 'image')} ({', '.join(names)}), "
                                    f"one --image per channel in this order; got {len(images)}")
    image, geometry = _read_patient(images, names)
    # segment() selects the model's channels from the dataset's channel layout
    layout = np.zeros((max(trained.meta["channels"]) + 1, *image.shape[1:]), np.float32)
    layout[trained.meta["channels"]] = image
    model_spacing = None if trained.resamples_itself else trained.meta.get("spacing")
    resample = model_spacing is not None and _differs_from_model(geometry.spacing, model_spacing)
    if model_spacing is None and not trained.resamples_itself:
        log(f"warning: {trained.path} records no training spacing; predicting at the image's own spacing")
    elif resample:
        log(f"{images[0]}: spacing {_mm(geometry.spacing)} (z, y, x) differs from the model's "
            f"{_mm(model_spacing)}: resampling to it (linear) and the segmentation back onto the "
            f"input grid (nearest neighbour)")
    _note_overwrites([out])
    labels = _segment_case(trained, layout, geometry, torch_device, overlap, images[0].name, resample)
    write_image(labels, out, geometry)


def run(args: argparse.Namespace) -> int:
    check_overlap(args.overlap)
    set_cpu_threads(args.threads)
    if args.image:
        if args.dataset:
            raise InputError("--image", "give either --dataset or --image, not both")
        if args.cases:
            raise InputError("--cases", "only with --dataset (--image segments the one patient given)")
        predict_files(args.model, args.image, args.out, args.device, args.overlap, args.set)
        print(f"wrote {args.out}")
        return 0
    if not args.dataset:
        raise InputError("--dataset", "give --dataset DIR (a fold's test cases) or --image FILE ...")
    cases = predict_dataset(args.model, args.dataset, args.out, args.cases, args.device, args.overlap, args.set)
    print(f"predicted {counted(len(cases), 'case')} into {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment a fold's test cases, or a new patient, with a trained model",
        description="Segment the test cases of the model's fold (--dataset), chosen cases (--cases), "
                    "or one new patient given as one image per channel (--image CT --image MR). "
                    "A new patient is resampled to the model's training spacing and the segmentation "
                    "back onto the first image's grid. Each output file is written atomically; "
                    "other files in --out are left alone.")
    parser.add_argument("--model", type=Path, required=True, help="a training output folder (holds model.pt)")
    parser.add_argument("--dataset", type=Path, help="dataset folder; default cases: the fold's test cases")
    parser.add_argument("--cases", nargs="+", help="case ids to segment instead of the fold's test cases")
    parser.add_argument("--image", type=Path, action="append",
                        help="a new patient's image, once per channel in training order")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"output folder (with --dataset) or {FILE_ENDING} file (with --image)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap, 0 <= overlap < 1")
    add_threads_argument(parser)
    parser.add_argument("--set", action="append", metavar="params.NAME=VALUE",
                        help="change an inference-only param, e.g. params.output=ct (CmFNet's y_ct head)")
    parser.set_defaults(func=run)
