"""FullySup: cross-entropy on dense masks, the upper bound of the comparison tables.

The CmFNet paper describes its FullySup row as cross-entropy on masks, so that is the loss here.
WSL4MIS's fully supervised script uses 0.5 * (CE + soft Dice) instead (see docs/baselines.md).
"""

from __future__ import annotations

import torch
from torch import nn

from cmfnet.losses import partial_ce
from cmfnet.method import Batch, Method, StepInfo


class FullySupervised(Method):
    """Mean CE over every labelled voxel of the dense mask.

    The engine pads volumes smaller than a patch with the ignore value 255, so the CE skips those
    voxels; on an unpadded dense mask it is the ordinary mean cross-entropy.
    """

    name = "fullysup"
    defaults = {}

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        ce = partial_ce(self.logits(model, batch.image), batch.target)
        return ce, {"ce": float(ce.detach())}
