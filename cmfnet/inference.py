"""Sliding-window inference with Gaussian blending, and ``cmfnet predict``.

Whole volumes of any shape are padded to at least one patch, tiled with overlapping patches whose
softmax outputs are blended with a Gaussian importance map (nnU-Net style), and cropped back.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Callable
from pathlib import Path
import numpy as np
import torch
from tqdm import tqdm

from cmfnet.errors import InputError
from cmfnet.io import Dataset, atomic_dir, read_image, write_image

Predictor = Callable[[torch.Tensor], torch.Tensor]


def gaussian_importance(patch_size: tuple[int, ...], sigma_scale: float = 0.125) -> torch.Tensor:
    """A Gaussian centred on the patch, so patch borders (least context) weigh least."""
    axes = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2 for p in patch_size]
    grids = torch.meshgrid(*axes, indexing="ij")
    weight = torch.ones(patch_size)
    for grid, p in zip(grids, patch_size):
        weight = weight * torch.exp(-0.5 * (grid / max(p * sigma_scale, 1e-6)) ** 2)
    weight = weight / weight.max()
    return weight.clamp_min(1e-3)  # never zero: every voxel of the volume gets some weight


def window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Evenly spaced patch origins covering ``[0, length)`` with at least the requested overlap."""
    if length <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    n = math.ceil((length - patch) / step) + 1
    return sorted({round(i * (length - patch) / (n - 1)) for i in range(n)})


def pad_to(image: torch.Tensor, shape: tuple[int, ...], divisor: int = 1) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad a (C, *spatial) tensor at the end to at least ``shape`` and a multiple of ``divisor``.

    Pads with each channel's minimum (the background intensity after normalisation).
    """
    spatial = image.shape[1:]
    target = [max(s, t) for s, t in zip(spatial, shape)]
    target = [math.ceil(t / divisor) * divisor for t in target]
    if list(spatial) == target:
        return image, tuple(slice(0, s) for s in spatial)
    out = image.new_empty((image.shape[0], *target))
    out[:] = image.flatten(1).min(dim=1).values.view(-1, *([1] * len(target)))
    crop = tuple(slice(0, s) for s in spatial)
    out[(slice(None), *crop)] = image
    return out, crop


@torch.no_grad()
def sliding_window_probabilities(image: torch.Tensor, predictor: Predictor, patch_size: tuple[int, ...],
                                 num_classes: int, overlap: float = 0.5, batch_size: int = 1,
                                 divisor: int = 16, progress: bool = False) -> torch.Tensor:
    """Blended softmax probabilities (K, *spatial) of a (C, *spatial) image, on the image's device.

    ``predictor`` maps a (B, C, *patch) batch to (B, K, *patch) logits.
    """
    padded, crop = pad_to(image, patch_size, divisor)
    spatial = padded.shape[1:]
    patch = tuple(min(p, s) for p, s in zip(patch_size, spatial))
    weight = gaussian_importance(patch).to(image.device)
    probs = torch.zeros((num_classes, *spatial), device=image.device)
    norm = torch.zeros(spatial, device=image.device)
    origins = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(spatial, patch))))
    chunks = range(0, len(origins), batch_size)
    for start in tqdm(chunks, desc="sliding window", disable=not progress, leave=False):
        batch_origins = origins[start:start + batch_size]
        windows = [tuple(slice(o, o + p) for o, p in zip(origin, patch)) for origin in batch_origins]
        batch = torch.stack([padded[(slice(None), *w)] for w in windows])
        out = torch.softmax(predictor(batch).float(), dim=1)
        for window, pred in zip(windows, out):
            probs[(slice(None), *window)] += pred * weight
            norm[window] += weight
    probs /= norm
    return probs[(slice(None), *crop)]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device", "CUDA requested but no CUDA device is available")
    return torch.device(name)


# -- cmfnet predict ---------------------------------------------------------------------------

def predict_dataset(model_dir: Path, dataset_dir: Path, out_dir: Path, cases: list[str] | None = None,
                    device: str = "auto", overlap: float = 0.5, overrides: list[str] | None = None) -> list[str]:
    """Segment a fold's test cases (or ``cases``) of a dataset; writes ``{case}.nii.gz`` atomically."""
    from cmfnet.engine import TrainedModel

    trained = TrainedModel.load(model_dir, overrides or ())
    dataset = Dataset(dataset_dir)
    trained.check_dataset(dataset)
    if cases is None:
        cases = dataset.split(trained.fold)["test"]
    torch_device = resolve_device(device)
    with atomic_dir(out_dir) as tmp:
        for case in tqdm(cases, desc="predict", disable=not sys.stderr.isatty()):
            image, geometry = dataset.load_image(case)
            labels = trained.segment(image, device=torch_device, overlap=overlap)
            write_image(labels, tmp / f"{case}.nii.gz", geometry)
            if not sys.stderr.isatty():
                print(f"predicted {case}", file=sys.stderr, flush=True)
    return cases


def predict_files(model_dir: Path, images: list[Path], out: Path, device: str = "auto",
                  overlap: float = 0.5, overrides: list[str] | None = None) -> None:
    """Segment one new patient given as one file per channel (CT first, as in training)."""
    from cmfnet.engine import TrainedModel

    trained = TrainedModel.load(model_dir, overrides or ())
    if len(images) != len(trained.channel_names):
        raise InputError(images[0] if images else model_dir,
                         f"the model expects {len(trained.channel_names)} images "
                         f"({', '.join(trained.channel_names)}), got {len(images)}")
    arrays, first = [], None
    for path in images:
        array, geometry = read_image(path)
        if first is not None and not geometry.same_grid(first):
            raise InputError(path, "not on the grid of the first image; resample it first "
                                   "(cmfnet import paired does that)")
        first = first or geometry
        arrays.append(array.astype(np.float32))
    assert first is not None
    labels = trained.segment(np.stack(arrays), device=resolve_device(device), overlap=overlap)
    write_image(labels, out, first)


def _run(args: argparse.Namespace) -> int:
    if args.image:
        if args.dataset:
            raise InputError("--image", "give either --dataset or --image, not both")
        predict_files(args.model, args.image, args.out, args.device, args.overlap, args.set)
        print(f"wrote {args.out}")
        return 0
    if not args.dataset:
        raise InputError("--dataset", "give --dataset DIR (a fold's test cases) or --image FILE ...")
    cases = predict_dataset(args.model, args.dataset, args.out, args.cases, args.device, args.overlap, args.set)
    print(f"predicted {len(cases)} cases into {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment a fold's test cases, or a new patient, with a trained model",
        description="Segment the test cases of the model's fold (--dataset), chosen cases (--cases), "
                    "or one new patient given as one image per channel (--image CT --image MR).")
    parser.add_argument("--model", type=Path, required=True, help="a training output folder (holds model.pt)")
    parser.add_argument("--dataset", type=Path, help="dataset folder; default cases: the fold's test cases")
    parser.add_argument("--cases", nargs="+", help="case ids to segment instead of the fold's test cases")
    parser.add_argument("--image", type=Path, action="append",
                        help="a new patient's image, once per channel in training order")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (with --dataset) or file (with --image)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (0-1)")
    parser.add_argument("--set", action="append", metavar="params.NAME=VALUE",
                        help="change an inference-only param, e.g. params.output=ct (CmFNet's y_ct head)")
    parser.set_defaults(func=_run)
