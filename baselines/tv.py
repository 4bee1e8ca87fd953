"""TV: pCE plus WSL4MIS's soft contour-length regulariser, lifted to 3D."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baselines.regularizers import soft_contour_length
from cmfnet.training.losses import partial_ce
from cmfnet.training.contract import Batch, Method, StepInfo


class TotalVariation(Method):
    """L = pCE + weight * mean(ReLU(opening(P) - erosion(P))) with 3x3x3 min/max pooling.

    Foreground channels only by default: WSL4MIS's ``tv_loss(outputs_soft[1:])`` was meant to drop
    the background channel but drops batch sample 0; we drop the channel on every sample.
    """

    name = "tv"
    defaults: dict[str, Any] = {
        "weight": 0.01,               # WSL4MIS, no ramp-up
        "include_background": False,  # the reference's intent (see above)
    }

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits(model, batch.image)
        pce = partial_ce(logits, batch.target)
        contour = soft_contour_length(torch.softmax(logits, dim=1), bool(self.params["include_background"]))
        total = pce + self.params["weight"] * contour
        return total, {"pce": float(pce.detach()), "tv": float(contour.detach())}
