"""Supervised-only lower bound of the semi-supervised track: cross-entropy on the labelled patches,
and the network never sees an unlabelled one.

pCE under ``supervision: semi`` would give the same loss (unlabelled targets are all 255), but
its forward pass would put the unlabelled patches into BatchNorm's batch statistics: a use of
unlabelled data that a lower bound must not make.
"""

from __future__ import annotations

import torch
from torch import nn

from cmfnet.training.contract import Batch, Method, StepInfo
from cmfnet.training.losses import partial_ce


class SupervisedOnly(Method):
    """L = CE over the labelled patches' masks; the unlabelled patches are dropped before the network."""

    name = "sup_only"
    defaults = {}

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        labelled = batch.labelled
        ce = partial_ce(self.logits(model, batch.image[labelled]), batch.target[labelled])
        return ce, {"ce": float(ce.detach())}
