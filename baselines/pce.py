"""pCE: partial cross-entropy on the labelled voxels of the training target.

The card's supervision decides the target, so one plugin is two rows of the tables:

* ``supervision: scribble`` (pCE): only scribbled voxels count, the baseline every other scribble
  method extends;
* ``supervision: mask`` (FullySup): the dense mask labels every voxel, so the same loss is the
  ordinary mean cross-entropy, the upper bound of the comparison tables. The CmFNet paper
  describes its FullySup row as cross-entropy on masks; WSL4MIS's fully supervised script uses
  0.5 * (CE + soft Dice) instead (see docs/baselines.md). Voxels the engine pads a small volume
  with are unlabelled (255) in either case and never count.
"""

from __future__ import annotations

import torch
from torch import nn

from cmfnet.training.contract import Batch, Method, StepInfo
from cmfnet.training.losses import partial_ce


class PartialCrossEntropy(Method):
    """L = -(1/|S|) sum_{i in S} log p_i^{y_i}; a patch without labelled voxels gives 0, not NaN."""

    name = "pce"
    defaults = {}

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        pce = partial_ce(self.logits(model, batch.image), batch.target)
        return pce, {"pce": float(pce.detach())}
