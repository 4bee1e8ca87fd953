"""USTM (Liu et al., Pattern Recognition 2022): pCE student, uncertainty-masked mean teacher with
transformation consistency, in 3D.

No official code is public; the behaviour follows WSL4MIS's ``train_weakly_supervised_ustm_2D.py``
with the deliberate changes listed in docs/baselines.md (ln K threshold, class-mean consistency,
continuous ramp, consistency target taken from the first of the T teacher passes).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from baselines.regularizers import check_schedule, entropy_of_probabilities, ramp_weight, schedule_iterations
from cmfnet.errors import InputError
from cmfnet.training.losses import partial_ce, sigmoid_rampup
from cmfnet.training.cards import Card
from cmfnet.training.contract import Batch, Method, StepInfo

AXIAL = (3, 4)  # (y, x) of a (B, C, z, y, x) tensor: rot90 there keeps the patch shape (y == x)


def uncertainty_threshold(iteration: int, length: int, num_classes: int) -> float:
    """(0.75 + 0.25 r(t)) ln K: the mask admits more voxels as training goes on.

    WSL4MIS uses ln 2 whatever K; ln K (PyMIC) keeps the threshold a fixed fraction of the largest
    possible entropy. Both agree for a binary task.
    """
    return (0.75 + 0.25 * sigmoid_rampup(iteration, length)) * math.log(num_classes)


@torch.no_grad()
def teacher_statistics(teacher: nn.Module, image: torch.Tensor, rotation: int, passes: int,
                       noise_std: float, noise_clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher softmax on rot90^k(image) + clamped noise, and the uncertainty of ``passes`` runs.

    Returns (target, uncertainty), both in the rotated frame: target is the first pass's softmax
    (B, K, ...), uncertainty the entropy in nats of the mean softmax (B, 1, ...). The teacher is
    left in the mode the engine keeps it in (train), so its dropout adds to the input noise.
    """
    rotated = torch.rot90(image, rotation, AXIAL)

    def noisy_pass() -> torch.Tensor:
        noise = torch.clamp(torch.randn_like(rotated) * noise_std, -noise_clip, noise_clip)
        return torch.softmax(teacher(rotated + noise), dim=1)

    target = noisy_pass()
    mean_probs = target.clone()
    for _ in range(passes - 1):
        mean_probs += noisy_pass()
    mean_probs /= passes
    return target, entropy_of_probabilities(mean_probs).unsqueeze(1)


def masked_consistency(student_logits: torch.Tensor, rotation: int, teacher_probs: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """Mean squared softmax difference over masked voxels and classes, in the teacher's frame.

    The student saw the unrotated patch, so its output is rotated by the same k before comparing.
    """
    student = torch.rot90(torch.softmax(student_logits, dim=1), rotation, AXIAL)
    squared = (student - teacher_probs) ** 2 * mask
    return squared.sum() / (student.shape[1] * mask.sum() + 1e-16)


class UncertaintyAwareTransformationConsistency(Method):
    """L = pCE + w r(t) * consistency(rot(p_student), p_teacher | uncertainty < threshold(t))."""

    name = "ustm"
    teacher_decay = 0.99  # WSL4MIS; the engine warms it up as min(1 - 1/(t+1), 0.99)
    defaults: dict[str, Any] = {
        "consistency": 1.0,          # WSL4MIS
        "consistency_rampup": 1.0,   # WSL4MIS reaches full weight at the end of training
        "threshold_rampup": 1.0,     # WSL4MIS ramps the threshold over all iterations
        "passes": 8,                 # T stochastic teacher passes
        "noise_std": 0.1,
        "noise_clip": 0.2,
    }

    def __init__(self, card: Card) -> None:
        super().__init__(card)
        for key in ("consistency_rampup", "threshold_rampup"):
            check_schedule(card, key, self.params[key])
        if int(self.params["passes"]) < 1:
            raise InputError(card.path, "params.passes must be at least 1")

    def draw_rotation(self) -> int:
        """k in 0..3, one per iteration (torch's generator, which the engine seeds)."""
        return int(torch.randint(0, 4, ()).item())

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        if step.teacher is None:
            raise RuntimeError("USTM needs the engine's EMA teacher (teacher_decay is set), got none")
        logits = self.logits(model, batch.image)
        pce = partial_ce(logits, batch.target)
        rotation = self.draw_rotation()
        target, uncertainty = teacher_statistics(
            step.teacher, batch.image, rotation, int(self.params["passes"]),
            float(self.params["noise_std"]), float(self.params["noise_clip"]))
        threshold = uncertainty_threshold(
            step.iteration, schedule_iterations(self.params["threshold_rampup"], step.max_iterations),
            logits.shape[1])
        mask = (uncertainty < threshold).to(logits.dtype)
        consistency = masked_consistency(logits, rotation, target, mask)
        weight = ramp_weight(self.params["consistency"], step.iteration, self.params["consistency_rampup"],
                             step.max_iterations)
        total = pce + weight * consistency
        return total, {"pce": float(pce.detach()), "consistency": float(consistency.detach()),
                       "consistency_weight": weight, "mask_fraction": float(mask.mean())}
