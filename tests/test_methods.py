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
    path, variant, _ = card_path_for_id(REPO / "methods", method)
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


def test_heads_are_rows_of_one_trained_model(tmp_path: Path, tiny_dataset: Path) -> None:
    from cmfnet.errors import InputError
    from cmfnet.method import method_ids, training_id

    ids = method_ids(REPO / "methods" / "table5.yaml")
    assert len(ids) == 32 and "table5.ct3_mr4@ct" in ids and "table5.ct3_mr4@mr" in ids
    assert training_id("table5.ct3_mr4@ct") == "table5.ct3_mr4" and len({training_id(i) for i in ids}) == 16
    path, variant, head = card_path_for_id(REPO / "methods", "table5.ct3_mr3@mr")
    card = load_card(path, ["network.width=2"], variant, head)
    assert card.id == "table5.ct3_mr3@mr" and card.name == "CT3MR3 y_mr" and card.params["output"] == "mr"

    trained_card = load_card(path, ["network.width=2"], variant)  # what the pipeline trains
    config = TrainConfig(iterations=2, batch_size=1, patch_size=[16, 32, 32], val_interval=2,
                         checkpoint_interval=2, log_interval=1)
    Trainer(trained_card, Dataset(tiny_dataset), 0, tmp_path / "m", config, device="cpu").fit()
    dataset = Dataset(tiny_dataset)
    image = torch.from_numpy(dataset.load_image(dataset.split(0)["test"][0])[0][:, :16, :32, :32]).unsqueeze(0)
    heads = {h: TrainedModel.load(tmp_path / "m", [f"params.output={h}"] if h else []) for h in ("", "ct", "mr")}
    with torch.no_grad():
        outputs = {h: m.method.logits(m.model, image) for h, m in heads.items()}
    assert torch.equal(outputs[""], outputs["ct"])  # MFL predicts with y_ct by default
    assert not torch.equal(outputs["ct"], outputs["mr"])
    with pytest.raises(InputError, match="would change what was trained"):
        TrainedModel.load(tmp_path / "m", ["params.lambda_ct=0.5"])


def test_every_shipped_card_passes_the_value_checks() -> None:
    """The type and range checks of params and network options accept every card and variant we ship."""
    from cmfnet.method import load_method, method_ids

    ids = [i for card in sorted((REPO / "methods").glob("*.yaml")) for i in method_ids(card)]
    for method_id in ids:
        path, variant, head = card_path_for_id(REPO / "methods", method_id)
        load_method(load_card(path, [], variant, head))
    assert len(ids) > len(TABLE1)


@pytest.mark.parametrize("method", ["dmsps", "s2l"])
def test_plugin_state_survives_a_kill_through_the_real_engine(method: str, tmp_path: Path, tiny_dataset: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the checkpoint at iteration 5 (DMSPS is in stage 2 since iteration 4, S2L has
    EMA maps), the resumed run ends with the weights and log rows of an uninterrupted one. The
    engine stores no targets: DMSPS must put its pseudo-labels back itself."""
    import csv

    # a low S2L threshold, so that its pseudo-labels (and so the weights) depend on the EMA maps
    sensitive = {"dmsps": [], "s2l": ["params.threshold=0.3", "params.alpha=0.5"]}[method]
    card = load_card(REPO / "methods" / f"{method}.yaml", ["network.width=2", *sensitive])
    config = TrainConfig(iterations=8, batch_size=2, patch_size=[16, 16, 16], val_interval=0,
                         checkpoint_interval=5, log_interval=4)

    def trainer(out: str) -> Trainer:
        return Trainer(card, Dataset(tiny_dataset), 0, tmp_path / out, config, device="cpu")

    def rows(out: str) -> list[dict[str, str]]:
        with open(tmp_path / out / "train_log.csv", newline="") as handle:
            return [{k: v for k, v in row.items() if k != "sec_per_it"} for row in csv.DictReader(handle)]

    trainer("full").fit()
    killed = trainer("killed")
    after_step = killed.method.after_step

    def die(trainer: Trainer, iteration: int) -> None:
        after_step(trainer, iteration)
        if iteration == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(killed.method, "after_step", die)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    trainer("killed").fit()
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["weights"]
    resumed = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["weights"]
    assert all(torch.equal(value, resumed[key]) for key, value in full.items())
    assert rows("killed") == rows("full")
