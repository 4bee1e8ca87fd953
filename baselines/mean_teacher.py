"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017) for the semi-supervised track, in 3D.

Cross-entropy on the labelled patches plus a mean-squared consistency between the student's and
the engine's EMA teacher's softmax on every patch of the batch (labelled and unlabelled), the
teacher seeing the patch with clamped Gaussian noise, weighted by the sigmoid ramp. The teacher
pass and the consistency are USTM's (``baselines/ustm.py``) without rotation, uncertainty mask or
repeated passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baselines.regularizers import check_schedule, ramp_weight
from baselines.ustm import masked_consistency, teacher_statistics
from cmfnet.training.cards import Card
from cmfnet.training.contract import Batch, Method, StepInfo
from cmfnet.training.losses import partial_ce


class MeanTeacher(Method):
    """L = CE(labelled) + w r(t) * mean((softmax(student) - softmax(teacher(x + noise)))^2)."""

    name = "mean_teacher"
    teacher_decay = 0.99  # the engine warms it up as min(1 - 1/(t+1), 0.99)
    defaults: dict[str, Any] = {
        "consistency": 0.1,         # weight w of the consistency term
        "consistency_rampup": 1.0,  # ramp length: the whole run (a float is a fraction of it)
        "noise_std": 0.1,           # teacher input noise, clamped to +-noise_clip (as USTM's)
        "noise_clip": 0.2,
    }

    def __init__(self, card: Card) -> None:
        super().__init__(card)
        check_schedule(card, "consistency_rampup", self.params["consistency_rampup"])

    def teacher_target(self, teacher: nn.Module, image: torch.Tensor,
                       step: StepInfo) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's softmax of the noisy patch (no gradient) and the voxels the consistency
        counts (B, 1, ...): all of them. UA-MT (``baselines/ua_mt.py``) masks the uncertain ones."""
        del step
        probs, _ = teacher_statistics(teacher, image, 0, 1, float(self.params["noise_std"]),
                                      float(self.params["noise_clip"]))
        return probs, torch.ones_like(probs[:, :1])

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        if step.teacher is None:
            raise RuntimeError("Mean Teacher needs the engine's EMA teacher (teacher_decay is set), got none")
        logits = self.logits(model, batch.image)
        labelled = batch.labelled
        supervised = partial_ce(logits[labelled], batch.target[labelled])
        teacher_probs, mask = self.teacher_target(step.teacher, batch.image, step)
        consistency = masked_consistency(logits, 0, teacher_probs, mask)
        weight = ramp_weight(self.params["consistency"], step.iteration, self.params["consistency_rampup"],
                             step.max_iterations)
        total = supervised + weight * consistency
        return total, {"ce": float(supervised.detach()), "consistency": float(consistency.detach()),
                       "consistency_weight": weight}
