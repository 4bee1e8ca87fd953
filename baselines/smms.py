"""The semi-supervised multi-modal method of seed 002 (Meng et al., MICCAI 2025, arXiv 2506.17136)
as a reference design: the paper's code is not public and its body could not be read, so every
choice marked [I] in ``docs/semi-supervised.md`` is inferred and is a parameter below.

* Network [I]: CmFNet's triple-branch network (the card's ``network`` block): modality-specific
  CT and MR branches and a cross-modal branch that fuses their encoder features at several stages
  (CFF) and enhances them at the deepest shared stage (CFE): the paper's "multi-stage multi-modal
  fusion and enhancement". Inference uses the fused head y_mm.
* Supervised loss [I]: cross-entropy + soft Dice on every head, labelled patches only.
* Contrastive mutual learning [P, form I]: between the CT and MR heads' foreground probability
  maps over the batch, Semi-CML's area-similarity contrast: the positive pair is one patch's two
  maps, the negatives the other patches' maps, similarity a soft Dice, and an NT-Xent over it in
  both directions. Weighted by the sigmoid ramp, on every patch (labelled and unlabelled) or on
  the unlabelled ones only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from baselines.regularizers import check_schedule, ramp_weight
from cmfnet.errors import InputError
from cmfnet.training.cards import Card
from cmfnet.training.contract import Batch, Method, StepInfo
from cmfnet.training.losses import partial_ce, soft_dice_loss

HEADS = ("mm", "ct", "mr")
CONTRASTED = ("all", "unlabelled")


def dice_similarity(a: torch.Tensor, b: torch.Tensor, smooth: float) -> torch.Tensor:
    """Soft Dice between every row of ``a`` and every row of ``b`` ((B, N) maps): a (B, B) matrix."""
    overlap = a @ b.T
    return (2 * overlap + smooth) / (a.sum(1, keepdim=True) + b.sum(1)[None, :] + smooth)


def contrastive_mutual_loss(probs_a: torch.Tensor, probs_b: torch.Tensor, temperature: float,
                            smooth: float) -> torch.Tensor:
    """NT-Xent over soft-Dice similarities of two branches' foreground maps, symmetrised.

    ``probs_*`` are (B, K, ...) softmax outputs; classes 1..K-1 of a patch form one map. Lowest
    when each patch's two maps agree with each other more than with any other patch's map; a
    batch of one patch has no negative and gives 0.
    """
    a = probs_a[:, 1:].flatten(1).float()
    b = probs_b[:, 1:].flatten(1).float()
    scores = dice_similarity(a, b, smooth) / temperature
    positives = torch.arange(len(scores), device=scores.device)
    return 0.5 * (F.cross_entropy(scores, positives) + F.cross_entropy(scores.T, positives))


class SMMS(Method):
    """L = sum over heads of (CE + Dice)(labelled) + w r(t) * contrast(p_ct, p_mr)."""

    name: ClassVar[str] = "smms"
    inference_params: ClassVar[frozenset[str]] = frozenset({"output"})
    defaults: ClassVar[dict[str, Any]] = {
        "supervised_dice": True,       # [I] CE + Dice (True) or CE only on the labelled patches
        "contrastive": 0.1,            # [I] weight w of the contrastive mutual-learning term
        "contrastive_rampup": 1.0,     # [I] sigmoid ramp length: the whole run, as Mean Teacher's
        "contrastive_patches": "all",  # [I] all | unlabelled: the patches the contrast compares
        "temperature": 1.0,            # [I] NT-Xent temperature (Semi-CML's 1, no projection head)
        "similarity_smooth": 1.0,      # [I] soft-Dice smoothing, so near-empty maps stay finite
        "output": "mm",                # head used for validation and inference
    }

    def __init__(self, card: Card) -> None:
        super().__init__(card)
        p = self.params
        check_schedule(card, "contrastive_rampup", p["contrastive_rampup"])
        if p["output"] not in HEADS:
            raise InputError(card.path, f"params.output must be one of {list(HEADS)}, got {p['output']!r}")
        if p["contrastive_patches"] not in CONTRASTED:
            raise InputError(card.path, f"params.contrastive_patches must be one of {list(CONTRASTED)}, "
                                        f"got {p['contrastive_patches']!r}")
        if p["contrastive"] < 0 or p["temperature"] <= 0 or p["similarity_smooth"] < 0:
            raise InputError(card.path, "params.contrastive and similarity_smooth must be >= 0, temperature > 0")
        if card.network.get("arch") != "cmfnet":
            raise InputError(card.path, "SMMS needs the triple-branch network: network.arch: cmfnet")

    def logits(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        return model(image)[f"y_{self.params['output']}"]

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        p = self.params
        out = model(batch.image)
        labelled = batch.labelled
        fused = [] if out["y_mm"] is out["y_ct"] else [out["y_mm"]]  # none without CFE/CFF
        heads = [*fused, out["y_ct"], out["y_mr"]]
        target = batch.target[labelled]
        supervised = torch.stack([partial_ce(y[labelled], target).float() for y in heads]).sum()
        terms = {"ce": float(supervised.detach())}
        if p["supervised_dice"]:
            dice = torch.stack([soft_dice_loss(y[labelled], target) for y in heads]).sum()
            supervised = supervised + dice
            terms["dice"] = float(dice.detach())
        contrasted = ~labelled if p["contrastive_patches"] == "unlabelled" else torch.ones_like(labelled)
        contrast = contrastive_mutual_loss(torch.softmax(out["y_ct"][contrasted], dim=1),
                                           torch.softmax(out["y_mr"][contrasted], dim=1),
                                           p["temperature"], p["similarity_smooth"])
        weight = ramp_weight(p["contrastive"], step.iteration, p["contrastive_rampup"], step.max_iterations)
        terms.update(contrastive=float(contrast.detach()), contrastive_weight=weight)
        return supervised + weight * contrast, terms
