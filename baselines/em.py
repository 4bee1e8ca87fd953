"""EM: pCE plus entropy minimisation on every voxel (Grandvalet & Bengio 2004; WSL4MIS, PyMIC)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baselines.regularizers import check_schedule, normalized_entropy, ramp_weight
from cmfnet.training.losses import partial_ce
from cmfnet.training.cards import Card
from cmfnet.training.contract import Batch, Method, StepInfo


class EntropyMinimization(Method):
    """L = pCE + weight * r(t) * mean_voxels(H(p) / ln K).

    The entropy is normalised to [0, 1] as in WSL4MIS. The sigmoid ramp (PyMIC ramps EM too; WSL4MIS
    does not) keeps an untrained network from locking in its early confident mistakes.
    """

    name = "em"
    defaults: dict[str, Any] = {
        "weight": 0.1,   # WSL4MIS and PyMIC
        "rampup": 0.5,   # ramp length: PyMIC's ramp ends at 15k of 30k iterations
    }

    def __init__(self, card: Card) -> None:
        super().__init__(card)
        check_schedule(card, "rampup", self.params["rampup"])

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits(model, batch.image)
        pce = partial_ce(logits, batch.target)
        entropy = normalized_entropy(logits).mean()
        weight = ramp_weight(self.params["weight"], step.iteration, self.params["rampup"], step.max_iterations)
        total = pce + weight * entropy
        return total, {"pce": float(pce.detach()), "entropy": float(entropy.detach()), "em_weight": weight}
