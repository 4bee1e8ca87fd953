"""Sliding-window probabilities with Gaussian blending, shared by validation and ``cmfnet predict``.

Whole volumes of any shape are padded to at least one patch, tiled with overlapping patches whose
softmax outputs are blended with a Gaussian importance map (nnU-Net style), and cropped back.
It lives in :mod:`cmfnet.training` because the engine validates with it; prediction imports it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

Predictor = Callable[[torch.Tensor], torch.Tensor]
# called after each batch of windows with (windows done, windows in total)
Progress = Callable[[int, int], None]

# The progress callback of sliding_window_probabilities calls that do not pass one: set by
# cmfnet predict around TrainedModel.segment, which calls sliding_window_probabilities itself.
_window_progress: ContextVar[Progress | None] = ContextVar("window_progress", default=None)


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
                                 divisor: int = 16, progress: Progress | None = None) -> torch.Tensor:
    """Blended softmax probabilities (K, *spatial) of a (C, *spatial) image, on the image's device.

    ``predictor`` maps a (B, C, *patch) batch to (B, K, *patch) logits. ``progress`` (default: the
    one :func:`reporting_progress` set, if any) hears of each finished batch of windows.
    """
    progress = progress or _window_progress.get()
    padded, crop = pad_to(image, patch_size, divisor)
    spatial = padded.shape[1:]
    patch = tuple(min(p, s) for p, s in zip(patch_size, spatial))
    weight = gaussian_importance(patch).to(image.device)
    probs = torch.zeros((num_classes, *spatial), device=image.device)
    norm = torch.zeros(spatial, device=image.device)
    origins = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(spatial, patch))))
    for start in range(0, len(origins), batch_size):
        batch_origins = origins[start:start + batch_size]
        windows = [tuple(slice(o, o + p) for o, p in zip(origin, patch)) for origin in batch_origins]
        batch = torch.stack([padded[(slice(None), *w)] for w in windows])
        out = torch.softmax(predictor(batch).float(), dim=1)
        for window, pred in zip(windows, out):
            probs[(slice(None), *window)] += pred * weight
            norm[window] += weight
        if progress is not None:
            progress(min(start + batch_size, len(origins)), len(origins))
    probs /= norm
    return probs[(slice(None), *crop)]


@contextmanager
def reporting_progress(progress: Progress) -> Iterator[None]:
    """Make ``progress`` the callback of every sliding window run inside the block."""
    token = _window_progress.set(progress)
    try:
        yield
    finally:
        _window_progress.reset(token)
