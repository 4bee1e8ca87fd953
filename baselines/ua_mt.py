"""UA-MT (Yu et al., MICCAI 2019) for the semi-supervised track: Mean Teacher whose consistency
counts only the voxels where the teacher is certain.

The teacher runs ``teacher_passes`` times (T, no gradient) on the patch plus clamped Gaussian
noise; the uncertainty is the entropy of the mean softmax, and the consistency keeps the voxels
whose uncertainty is below (0.75 + 0.25 r(t)) ln K, r the sigmoid ramp over ``threshold_rampup``.
Everything else is Mean Teacher's (``baselines/mean_teacher.py``); the passes and the mask are
USTM's helpers (``baselines/ustm.py``) without rotation.

Deviations from the reference (yulequan/UA-MT, SSL4MIS ``train_uncertainty_aware_mean_teacher_3D.py``):
cross-entropy only as the supervised term (the reference adds Dice), as the other semi rows; the
consistency on every patch (the reference: unlabelled patches only), as this suite's Mean Teacher,
so that UA-MT differs from it by the mask alone; the consistency target is the first of the T passes
(the reference draws a ninth); ln K instead of ln 2 (equal for two classes). Cost: T + 1 forward
passes per step where Mean Teacher needs two.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baselines.mean_teacher import MeanTeacher
from baselines.regularizers import check_schedule, schedule_iterations
from baselines.ustm import teacher_statistics, uncertainty_threshold
from cmfnet.errors import InputError
from cmfnet.training.cards import Card
from cmfnet.training.contract import Batch, StepInfo


class UncertaintyAwareMeanTeacher(MeanTeacher):
    """Mean Teacher's loss, the consistency masked to uncertainty < threshold(t)."""

    name = "ua_mt"
    defaults: dict[str, Any] = {
        **MeanTeacher.defaults,
        "threshold_rampup": 1.0,  # the reference ramps the threshold over all iterations
        "teacher_passes": 8,      # T of the reference
    }

    def __init__(self, card: Card) -> None:
        super().__init__(card)
        check_schedule(card, "threshold_rampup", self.params["threshold_rampup"])
        if self.params["teacher_passes"] < 1:
            raise InputError(card.path, "params.teacher_passes must be at least 1")
        self._mask_fraction = 1.0  # share of the last step's voxels the consistency counted

    def teacher_target(self, teacher: nn.Module, image: torch.Tensor,
                       step: StepInfo) -> tuple[torch.Tensor, torch.Tensor]:
        """The first noisy pass's softmax and the voxels whose T-pass uncertainty is under the threshold."""
        probs, uncertainty = teacher_statistics(teacher, image, 0, self.params["teacher_passes"],
                                                float(self.params["noise_std"]), float(self.params["noise_clip"]))
        threshold = uncertainty_threshold(
            step.iteration, schedule_iterations(self.params["threshold_rampup"], step.max_iterations), probs.shape[1])
        mask = (uncertainty < threshold).to(probs.dtype)
        self._mask_fraction = float(mask.mean())
        return probs, mask

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = super().loss(model, batch, step)
        return total, {**parts, "mask_fraction": self._mask_fraction}
