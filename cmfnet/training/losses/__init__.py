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


def sigmoid_rampup(iteration: float, length: float) -> float:
    """exp(-5 (1 - t/L)^2), the ramp every HiLab reference uses; 1 once ``iteration >= length``."""
    if length <= 0:
        return 1.0
    t = min(max(iteration, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
