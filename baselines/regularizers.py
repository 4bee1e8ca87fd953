"""Loss terms and schedule helpers shared by the weakly-supervised baselines.

Every function works on 3D tensors laid out (B, K, z, y, x). What each term means and where it
deviates from its reference is in ``docs/baselines.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from cmfnet.errors import InputError
from cmfnet.training.losses import sigmoid_rampup
from cmfnet.training.cards import Card


# -- schedules -------------------------------------------------------------------------------------
def check_schedule(card: Card, key: str, value: Any) -> None:
    """Schedule lengths are an ``int`` (iterations) or a ``float`` in [0, 1] (fraction of training).

    The two spellings keep short presets meaningful: a fraction scales with ``max_iterations``,
    an integer reproduces a reference's iteration count exactly.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(card.path, f"params.{key} must be an int (iterations) or a float in [0, 1] "
                                    f"(fraction of max_iterations), got {value!r}")
    if value < 0 or (isinstance(value, float) and value > 1):
        raise InputError(card.path, f"params.{key}={value}: an int counts iterations, a float must "
                                    f"be a fraction of max_iterations in [0, 1]")


def schedule_iterations(value: int | float, max_iterations: int) -> int:
    """Iterations meant by a schedule parameter (see :func:`check_schedule`)."""
    if isinstance(value, float):
        return int(round(value * max_iterations))
    return int(value)


def ramp_weight(weight: float, iteration: int, rampup: int | float, max_iterations: int) -> float:
    """``weight * exp(-5 (1 - t/L)^2)``, the HiLab sigmoid ramp, with L from a schedule parameter."""
    return weight * sigmoid_rampup(iteration, schedule_iterations(rampup, max_iterations))


# -- entropy ---------------------------------------------------------------------------------------
def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-voxel entropy of softmax(logits) divided by ln K, in [0, 1]; shape (B, z, y, x).

    Computed from log-softmax so it is exact (uniform -> 1) and has finite gradients even where a
    probability underflows to 0, unlike ``p * log(p + eps)`` on probabilities.
    """
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1) / math.log(logits.shape[1])


def entropy_of_probabilities(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy in nats of probability maps (no gradient needed: used for uncertainty masks).

    Computed in float32: a float16 clamp at 1e-12 would round to 0 and give 0 * log 0 = NaN.
    """
    probs = probs.float()
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=dim)


# -- total variation (soft contour length) ---------------------------------------------------------
def soft_erosion(probs: torch.Tensor) -> torch.Tensor:
    """3x3x3 min-pooling; the implicit -inf padding of max pooling keeps borders un-eroded by padding."""
    return -F.max_pool3d(-probs, kernel_size=3, stride=1, padding=1)


def soft_dilation(probs: torch.Tensor) -> torch.Tensor:
    return F.max_pool3d(probs, kernel_size=3, stride=1, padding=1)


def soft_contour_length(probs: torch.Tensor, include_background: bool = False) -> torch.Tensor:
    """mean(ReLU(opening - erosion)): a soft count of boundary voxels, zero on constant maps.

    ``include_background=False`` drops channel 0, which is what WSL4MIS's ``outputs_soft[1:]``
    meant to do (it sliced the batch instead).
    """
    if not include_background:
        probs = probs[:, 1:]
    eroded = soft_erosion(probs)
    return F.relu(soft_dilation(eroded) - eroded).mean()


# -- Mumford-Shah ----------------------------------------------------------------------------------
def mumford_shah_loss(image: torch.Tensor, probs: torch.Tensor, beta: float = 1.0,
                      penalty: str = "l1") -> torch.Tensor:
    """Piecewise-constant Mumford-Shah functional of soft regions ``probs`` on ``image``.

    Level term: per sample and class, the centroid mu = sum(I p) / sum(p) over the whole 3D patch
    (per image channel), then sum_c sum_x (I - mu_c)^2 p_c summed over image channels. Length
    term: |dz p| + |dy p| + |dx p| (squared with ``penalty="l2"``). Both are divided by
    ``probs.numel()`` (mean normalisation), so the weight does not depend on the patch size.
    The argument order is (image, prediction): the WSL4MIS and PA-Seg copies swap it.
    """
    if image.shape[0] != probs.shape[0] or image.shape[2:] != probs.shape[2:]:
        raise ValueError(f"image {tuple(image.shape)} and prediction {tuple(probs.shape)} differ in batch or grid")
    spatial = (2, 3, 4)
    mass = probs.sum(dim=spatial).clamp_min(1e-8)  # (B, K)
    level = probs.new_zeros(())
    for channel in range(image.shape[1]):
        intensity = image[:, channel:channel + 1]  # (B, 1, z, y, x)
        centroid = (intensity * probs).sum(dim=spatial) / mass  # (B, K)
        level = level + ((intensity - centroid[..., None, None, None]) ** 2 * probs).sum()
    length = probs.new_zeros(())
    for axis in spatial:
        diff = torch.diff(probs, dim=axis).abs()
        length = length + (diff * diff if penalty == "l2" else diff).sum()
    return (level + beta * length) / probs.numel()


# -- soft-label cross-entropy ----------------------------------------------------------------------
def soft_cross_entropy(scores: torch.Tensor, soft_target: torch.Tensor) -> torch.Tensor:
    """mean over voxels of -sum_c q_c log softmax(scores)_c (``nn.CrossEntropyLoss`` with soft targets)."""
    return -(soft_target * F.log_softmax(scores, dim=1)).sum(dim=1).mean()
