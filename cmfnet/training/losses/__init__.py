"""Losses shared by several methods, and ramp-up schedules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cmfnet.data.io import IGNORE


def partial_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Cross-entropy over labelled voxels only (pCE), mean-reduced.

    A batch with no labelled voxel gives a zero loss that is still attached to the graph, instead
    of the NaN that ``F.cross_entropy(..., reduction="mean")`` returns.
    """
    labelled = target != ignore_index
    n = labelled.sum()
    if n == 0:
        return logits.sum() * 0.0
    total = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="sum")
    return total / n


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE,
                   smooth: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice of softmax(logits) against ``target``, over the batch, averaged over the
    foreground classes (the form of the SSL4MIS references); voxels marked ``ignore_index`` count
    for neither side."""
    probs = torch.softmax(logits.float(), dim=1)
    labelled = (target != ignore_index).unsqueeze(1)
    onehot = F.one_hot(torch.where(labelled[:, 0], target.long(), 0), logits.shape[1]).movedim(-1, 1)
    probs, onehot = probs * labelled, onehot * labelled
    dims = (0, *range(2, logits.ndim))
    overlap = (probs * onehot).sum(dims)[1:]
    size = probs.sum(dims)[1:] + onehot.sum(dims)[1:]
    return 1.0 - ((2 * overlap + smooth) / (size + smooth)).mean()


def sigmoid_rampup(iteration: float, length: float) -> float:
    """exp(-5 (1 - t/L)^2), the ramp every HiLab reference uses; 1 once ``iteration >= length``."""
    if length <= 0:
        return 1.0
    t = min(max(iteration, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
