"""The shared losses and ramp (cmfnet/training/losses): values checked against hand counts at the
edges the training tests never reach (one labelled voxel, a class absent from the target, the
first iterations of a ramp). Written for mutmut survivors (issue 16)."""

from __future__ import annotations

import math

import pytest
import torch

from cmfnet.data.io import IGNORE
from cmfnet.training.losses import partial_ce, sigmoid_rampup, soft_dice_loss


def test_partial_ce_of_one_labelled_voxel_is_its_negative_log_probability() -> None:
    logits = torch.randn(1, 3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    target = torch.full((1, 2, 2, 2), IGNORE)
    target[0, 1, 0, 1] = 2
    expected = -torch.log_softmax(logits, 1)[0, 2, 1, 0, 1]
    torch.testing.assert_close(partial_ce(logits, target), expected)


def test_partial_ce_without_labels_is_zero_and_finite() -> None:
    logits = torch.randn(1, 2, 2, 2, 2, requires_grad=True)
    loss = partial_ce(logits, torch.full((1, 2, 2, 2), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_soft_dice_handles_a_class_absent_from_the_target() -> None:
    """Three classes, a target of background and class 1 only (class 2 absent, as in most
    patches): the one-hot has all three channels and class 2 scores smooth / (sum p_2 + smooth)."""
    logits = torch.zeros(1, 3, 1, 1, 2)  # uniform: p = 1/3 everywhere
    target = torch.tensor([[[[0, 1]]]])
    smooth = 1e-5
    dice1 = (2 * (1 / 3) + smooth) / (2 / 3 + 1 + smooth)
    dice2 = smooth / (2 / 3 + smooth)
    assert soft_dice_loss(logits, target, smooth=smooth).item() == pytest.approx(1 - (dice1 + dice2) / 2)


def test_soft_dice_ignores_unlabelled_voxels_whatever_their_stored_value() -> None:
    logits = torch.randn(1, 2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    labelled = torch.tensor([[[[0, 1], [IGNORE, IGNORE]]]])
    kept = soft_dice_loss(logits[..., :1, :], labelled[..., :1, :])
    assert soft_dice_loss(logits, labelled).item() == pytest.approx(kept.item())


@pytest.mark.parametrize(("iteration", "length", "expected"), [
    (0.5, 10.0, math.exp(-5 * (1 - 0.05) ** 2)),  # within the first iteration: not clamped to 1
    (-3.0, 10.0, math.exp(-5.0)),                  # before the start: the start value
    (25.0, 10.0, 1.0),
    (0.5, 1.0, math.exp(-5 * 0.5 ** 2)),           # a one-iteration ramp is still a ramp
    (3.0, 0.0, 1.0),                               # no ramp: full weight at once
])
def test_sigmoid_rampup_values(iteration: float, length: float, expected: float) -> None:
    assert sigmoid_rampup(iteration, length) == pytest.approx(expected)
