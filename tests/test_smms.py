"""The seed-002 reference design (baselines/smms.py): its contrastive mutual-learning loss, the
soft Dice it adds to cross-entropy, and how its loss is wired from the three heads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from baselines.smms import SMMS, contrastive_mutual_loss
from cmfnet.data.io import IGNORE
from cmfnet.errors import InputError
from cmfnet.training.cards import load_card
from cmfnet.training.contract import Batch, StepInfo
from cmfnet.training.losses import partial_ce, soft_dice_loss

REPO = Path(__file__).resolve().parents[1]


def smms(*overrides: str) -> SMMS:
    return SMMS(load_card(REPO / "methods" / "semi_smms.yaml", ["network.width=2", *overrides]))


def blob_probs(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 2, 4, 8, 8) softmax maps, each patch with its own foreground blob."""
    fg = torch.zeros(batch, 4, 8, 8)
    for b in range(batch):
        z, y, x = (int(v) for v in torch.randint(0, 4, (3,), generator=generator))
        fg[b, z:z + 2, 2 * y:2 * y + 3, 2 * x:2 * x + 3] = 0.9
    fg = fg + 0.05 * torch.rand(fg.shape, generator=generator)
    return torch.stack([1 - fg, fg], dim=1)


def test_contrast_is_lowest_when_each_patch_agrees_with_itself_and_rises_when_patches_are_swapped() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = blob_probs(4, generator)
    agree = contrastive_mutual_loss(probs, probs, 1.0, 1.0)
    swapped = contrastive_mutual_loss(probs, probs.roll(1, dims=0), 1.0, 1.0)
    assert agree < math.log(4) < swapped  # below chance when paired right, above it when swapped
    sharper = contrastive_mutual_loss(probs, probs, 0.1, 1.0)
    assert sharper < agree  # a lower temperature separates the positives further
    assert contrastive_mutual_loss(probs[:1], probs[:1], 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_contrast_is_symmetric_in_the_two_branches() -> None:
    generator = torch.Generator().manual_seed(1)
    a, b = blob_probs(3, generator), blob_probs(3, generator)
    assert contrastive_mutual_loss(a, b, 1.0, 1.0).item() == pytest.approx(contrastive_mutual_loss(b, a, 1.0, 1.0).item())


def test_soft_dice_loss_matches_a_hand_count_and_skips_ignored_voxels() -> None:
    target = torch.tensor([[0, 1, 1, IGNORE]])
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.0001, 0.5], [0.5, 0.75, 0.9999, 0.5]]]))  # (1, 2, 4)
    probs = torch.softmax(logits, dim=1)[0, 1, :3]
    expected = 1 - (2 * (probs[1] + probs[2]) + 1e-5) / (probs.sum() + 2 + 1e-5)
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    perfect = torch.tensor([[[9.0, -9, -9, 0], [-9, 9, 9, 0]]])
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-4)


class Heads(torch.nn.Module):
    """Fixed logits per head, whatever the input: lets a test compute the loss by hand."""

    def __init__(self, heads: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.heads = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in heads.items()})

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.heads.items()}


def test_loss_sums_ce_and_dice_of_every_head_on_labelled_patches_plus_the_ramped_contrast() -> None:
    generator = torch.Generator().manual_seed(2)
    heads = {f"y_{h}": torch.randn(4, 2, 4, 8, 8, generator=generator) for h in ("mm", "ct", "mr")}
    target = torch.randint(0, 2, (4, 4, 8, 8), generator=generator)
    target[2:] = IGNORE
    labelled = torch.tensor([True, True, False, False])
    batch = Batch(torch.zeros(4, 2, 4, 8, 8), target, list("abuv"), [], [], labelled)
    method = smms("params.contrastive=0.5", "params.contrastive_rampup=100")
    loss, parts = method.loss(Heads(heads), batch, StepInfo(50, 1000))
    supervised = sum(partial_ce(y[:2], target[:2]) + soft_dice_loss(y[:2], target[:2]) for y in heads.values())
    contrast = contrastive_mutual_loss(torch.softmax(heads["y_ct"], 1), torch.softmax(heads["y_mr"], 1), 1.0, 1.0)
    weight = 0.5 * math.exp(-5 * 0.5 ** 2)
    assert parts["contrastive_weight"] == pytest.approx(weight)
    assert loss.item() == pytest.approx((supervised + weight * contrast).item(), rel=1e-5)
    # the CT and MR heads enter the contrast, the fused head does not; only unlabelled patches if asked
    only_unlabelled = smms("params.contrastive_patches=unlabelled").loss(Heads(heads), batch, StepInfo(999, 1000))[1]
    expected = contrastive_mutual_loss(torch.softmax(heads["y_ct"][2:], 1), torch.softmax(heads["y_mr"][2:], 1), 1.0, 1.0)
    assert only_unlabelled["contrastive"] == pytest.approx(expected.item(), rel=1e-5)
    no_dice = smms("params.supervised_dice=false").loss(Heads(heads), batch, StepInfo(0, 1000))[1]
    assert "dice" not in no_dice and no_dice["ce"] == pytest.approx(parts["ce"])


def test_predicts_with_the_head_its_card_names_and_refuses_bad_params() -> None:
    heads = {f"y_{h}": torch.full((1, 2, 1, 1, 1), float(i)) for i, h in enumerate(("mm", "ct", "mr"))}
    assert smms().logits(Heads(heads), torch.zeros(1)).flatten()[0].item() == 0.0
    assert smms("params.output=mr").logits(Heads(heads), torch.zeros(1)).flatten()[0].item() == 2.0
    for bad, problem in (("params.output=fused", "params.output"), ("params.contrastive_patches=some", "contrastive_patches"),
                         ("params.temperature=0.0", "temperature")):
        with pytest.raises(InputError, match=problem):
            smms(bad)
    with pytest.raises(InputError, match="network.arch: cmfnet"):
        SMMS(load_card(REPO / "methods" / "semi_meanteacher.yaml"))
