"""Cross Pseudo Supervision (Chen et al., CVPR 2021) for the semi-supervised track, in 3D, and its
cross-modality variant.

Two networks of the card's architecture, built one after the other from the engine's seeded RNG
(so with different initial weights), one optimiser over both (the engine's, over
``model.parameters()``). Each net gets cross-entropy on the labelled patches and, weighted by the
sigmoid ramp, cross-entropy against the other net's detached argmax on every patch. Prediction is
net A's (SSL4MIS evaluates and keeps ``model1``).

Deviations from SSL4MIS ``train_cross_pseudo_supervision_3D.py``: cross-entropy only as the
supervised term (the reference: 0.5 (CE + Dice)), as the other semi rows; the pseudo-supervision
on every patch, labelled ones too (as the CPS paper; SSL4MIS: unlabelled patches only); both nets
keep the architecture's default initialisation, drawn twice (SSL4MIS: Kaiming for one, Xavier for
the other); the ramp over the whole run (SSL4MIS: 200 "epochs" of 150 iterations = its 30000).

``modality_split: true`` ("X-modal CPS"): net A sees channel 0 (CT) only, net B channel 1 (MR)
only, each built with one input channel, and prediction is the log of the two nets' mean softmax,
so inference needs both modalities. It is a simplified cross-modality pseudo-supervision peer in
the spirit of CMC (Zhou et al., MICCAI 2024, med-air/CMC), not CMC's method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baselines.regularizers import check_schedule, ramp_weight
from cmfnet.errors import InputError
from cmfnet.training.cards import Card
from cmfnet.training.contract import Batch, Method, StepInfo
from cmfnet.training.losses import partial_ce


class PeerNetworks(nn.Module):
    """Nets ``a`` and ``b``; ``forward`` is the prediction (see the module docstring)."""

    def __init__(self, a: nn.Module, b: nn.Module, modality_split: bool) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.modality_split = modality_split

    @property
    def size_divisor(self) -> int:
        return max(int(getattr(net, "size_divisor", 16)) for net in (self.a, self.b))

    def both(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of a, logits of b); split: a on channel 0, b on channel 1."""
        if self.modality_split:
            return self.a(image[:, :1]), self.b(image[:, 1:2])
        return self.a(image), self.b(image)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not self.modality_split:
            return self.a(image)
        logits_a, logits_b = self.both(image)
        return torch.log(0.5 * (torch.softmax(logits_a, dim=1) + torch.softmax(logits_b, dim=1)))


class CrossPseudoSupervision(Method):
    """L = sum over nets n of CE_n(labelled) + w r(t) * CE(logits_n, argmax(logits_other).detach())."""

    name = "cps"
    defaults: dict[str, Any] = {
        "consistency": 0.1,         # weight w of the pseudo-supervision (SSL4MIS)
        "consistency_rampup": 1.0,  # ramp length: the whole run (a float is a fraction of it)
        "modality_split": False,    # net A on channel 0 only, net B on channel 1 only
    }

    def __init__(self, card: Card) -> None:
        super().__init__(card)
        check_schedule(card, "consistency_rampup", self.params["consistency_rampup"])

    def build_network(self, in_channels: int, num_classes: int) -> nn.Module:
        split = self.params["modality_split"]
        if split and in_channels != 2:
            raise InputError(self.card.path, f"params.modality_split needs exactly two input channels (CT, MR), "
                                             f"the data gives {in_channels}")
        per_net = 1 if split else in_channels
        a = super().build_network(per_net, num_classes)
        b = super().build_network(per_net, num_classes)  # drawn after a: other initial weights
        return PeerNetworks(a, b, split)

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        logits_a, logits_b = model.both(batch.image)
        labelled = batch.labelled
        ce_a = partial_ce(logits_a[labelled], batch.target[labelled])
        ce_b = partial_ce(logits_b[labelled], batch.target[labelled])
        pseudo_a = partial_ce(logits_a, logits_b.detach().argmax(dim=1))  # a learns b's hard labels
        pseudo_b = partial_ce(logits_b, logits_a.detach().argmax(dim=1))
        weight = ramp_weight(self.params["consistency"], step.iteration, self.params["consistency_rampup"],
                             step.max_iterations)
        total = ce_a + ce_b + weight * (pseudo_a + pseudo_b)
        return total, {"ce_a": float(ce_a.detach()), "ce_b": float(ce_b.detach()),
                       "pseudo_a": float(pseudo_a.detach()), "pseudo_b": float(pseudo_b.detach()),
                       "consistency_weight": weight}
