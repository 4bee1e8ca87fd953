"""pCE: partial cross-entropy on scribbled voxels only, the baseline every other method extends."""

from __future__ import annotations

import torch
from torch import nn

from cmfnet.losses import partial_ce
from cmfnet.method import Batch, Method, StepInfo


class PartialCrossEntropy(Method):
    """L = -(1/|S|) sum_{i in S} log p_i^{y_i}; a patch without scribbles gives 0, not NaN."""

    name = "pce"
    defaults = {}

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        pce = partial_ce(self.logits(model, batch.image), batch.target)
        return pce, {"pce": float(pce.detach())}
