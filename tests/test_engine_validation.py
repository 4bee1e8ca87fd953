"""The engine's validation Dice (which selects checkpoints and draws the convergence curves) and
the mean teacher's resume. Written for the mutation survivors of 2026-12-05 (docs/testing.md):
each test failed on the breaks its docstring names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmfnet.data.dataset import Dataset
from cmfnet.data.io import IGNORE
from cmfnet.training.cards import load_card
from cmfnet.training.config import TrainConfig
from cmfnet.training.engine import Trainer, _dice_foreground
from cmfnet.training.model import TrainedModel

from test_engine import AFTER_KILL, FAST, _log_rows, kill_after, make_trainer

REPO = Path(__file__).resolve().parents[1]


def test_validation_dice_by_hand() -> None:
    """Fails on: ignored voxels counted, background scored, a class absent on both sides scored
    (or any other class skipped), a wrong Dice formula, another value for no foreground at all."""
    reference = np.array([0, 1, 1, 1, 2, 2, IGNORE, IGNORE, 0, 0])
    pred = np.array([1, 1, 1, 0, 2, 0, 1, 2, 0, 0])
    # class 1: pred {0,1,2} (7 ignored), ref {1,2,3}: 2*2/6; class 2: pred {4} (7 ignored), ref {4,5}: 2*1/3
    assert _dice_foreground(pred, reference, 3) == pytest.approx((4 / 6 + 2 / 3) / 2)
    assert _dice_foreground(pred, reference, 4) == pytest.approx((4 / 6 + 2 / 3) / 2)  # class 3 absent: skipped
    only_two = np.where(reference == 1, 0, reference)
    assert _dice_foreground(np.where(pred == 1, 0, pred), only_two, 3) == pytest.approx(2 / 3)
    assert _dice_foreground(np.where(pred == 1, 0, pred), only_two, 2) == 0.0  # no class 1 anywhere: 0
    assert _dice_foreground(np.zeros(4, int), np.array([0, 1, 1, IGNORE]), 2) == 0.0  # missed: 0
    assert _dice_foreground(np.array([0, 0, 2, 2]), np.array([1, 1, 2, 2]), 3) == 0.5  # a missed class counts 0
    assert _dice_foreground(np.array([0, 1, 1, 1]), np.array([0, 1, 1, IGNORE]), 2) == 1.0


def test_logged_validation_dice_is_the_saved_models_dice_on_the_validation_cases(
        tmp_path: Path, tiny_dataset: Path) -> None:
    """What the curves plot and selection reads is the Dice of the weights model.pt keeps, as
    cmfnet predict segments the validation cases. Fails when validation scores other weights,
    takes the argmax over another axis, or scores the prediction against anything but the label."""
    trainer = make_trainer(tmp_path, tiny_dataset, iterations=12, val_interval=12, selection="ema",
                           ema_decay=0.5, val_overlap=0.5, lr=0.01)
    meta = trainer.fit()
    dataset = Dataset(tiny_dataset)
    trained = TrainedModel.load(tmp_path / "out")
    scores = []
    for case in meta["val_cases"]:
        pred = trained.segment(dataset.load_image(case)[0], torch.device("cpu"), overlap=0.5)
        label = dataset.load_label(case)
        scores.append(2 * ((pred == 1) & (label == 1)).sum() / ((pred == 1).sum() + (label == 1).sum()))
    assert 0 < np.mean(scores) < 1  # a real, imperfect segmentation
    assert meta["selected_val_dice"] == pytest.approx(float(np.mean(scores)), abs=1e-6)


def test_resume_after_kill_restores_the_mean_teacher(tmp_path: Path, tiny_dataset: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """USTM's student learns from its EMA teacher, so a resume that loses the teacher (not written to
    last.pt, or not loaded) ends on other weights. Fails when either happens."""
    card = load_card(REPO / "methods" / "ustm.yaml", ["network.width=2", "network.dropout=0"])

    def trainer(out: str) -> Trainer:
        return Trainer(card, Dataset(tiny_dataset), 0, tmp_path / out, TrainConfig(**{**FAST, **AFTER_KILL}),
                       device="cpu")

    trainer("full").fit()
    kill_after(monkeypatch, trainer("killed"), 5)
    monkeypatch.undo()
    trainer("killed").fit()
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["weights"]
    resumed = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["weights"]
    for key, value in full.items():
        assert torch.equal(value, resumed[key]), key
    assert _log_rows(tmp_path / "killed") == _log_rows(tmp_path / "full")
