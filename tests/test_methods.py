"""Every method card of Table I trains, resumes-safely finishes and predicts through the real engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmfnet.engine import TrainConfig, TrainedModel, Trainer
from cmfnet.io import Dataset
from cmfnet.method import card_path_for_id, load_card

REPO = Path(__file__).resolve().parents[1]
TABLE1 = ["fullysup", "pce", "dmsps", "em", "tv", "ms", "ustm", "s2l", "cmfnet_autobg", "cmfnet"]


@pytest.mark.parametrize("method", TABLE1)
def test_card_trains_and_predicts(method: str, tmp_path: Path, tiny_dataset: Path) -> None:
    path, variant = card_path_for_id(REPO / "methods", method)
    card = load_card(path, ["network.width=2"], variant)
    if card.scribble_variant == "autobg":  # the tiny fixture ships one variant
        card.scribble_variant = "sim"
    config = TrainConfig(iterations=6, batch_size=2, patch_size=[16, 32, 32], val_interval=3,
                         checkpoint_interval=3, log_interval=3)
    meta = Trainer(card, Dataset(tiny_dataset), 0, tmp_path / method, config, device="cpu").fit()
    assert meta["max_iterations"] == 6 and np.isfinite(meta["best_val_dice"])
    trained = TrainedModel.load(tmp_path / method)
    dataset = Dataset(tiny_dataset)
    image, _ = dataset.load_image(dataset.split(0)["test"][0])
    labels = trained.segment(image, torch.device("cpu"))
    assert labels.shape == image.shape[1:] and set(np.unique(labels)) <= {0, 1}
