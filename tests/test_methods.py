"""Every method card of Table I trains, resumes-safely finishes and predicts through the real engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmfnet.training.contract import TrainingContext
from cmfnet.training.engine import Trainer
from cmfnet.training.model import TrainedModel
from cmfnet.training.config import TrainConfig
from cmfnet.data.dataset import Dataset
from cmfnet.training.cards import card_path_for_id, load_card

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
    assert meta["max_iterations"] == 6 and np.isfinite(meta["selected_val_dice"])
    trained = TrainedModel.load(tmp_path / method)
    dataset = Dataset(tiny_dataset)
    image, _ = dataset.load_image(dataset.split(0)["test"][0])
    labels = trained.segment(image, torch.device("cpu"))
    assert labels.shape == image.shape[1:] and set(np.unique(labels)) <= {0, 1}


def test_heads_are_rows_of_one_trained_model(tmp_path: Path, tiny_dataset: Path) -> None:
    from cmfnet.errors import InputError
    from cmfnet.training.cards import method_ids
    from cmfnet.training.row_ids import training_id

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
    from cmfnet.training.cards import method_ids
    from cmfnet.training.plugins import load_method

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

    def die(context: TrainingContext, iteration: int) -> None:
        after_step(context, iteration)
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


# -- cards that extend cards ------------------------------------------------------------------------

FORMER_CMFNET_CARD = """\
name: CmFNet
plugin: baselines.cmfnet
supervision: scribble
scribble_variant: sim
network: {arch: cmfnet, width: 16, ct_convs: 3, mr_convs: 4, mm_convs: 3, cfe: true, cff: true, dropout: 0.5}
params: {use_ssl: true, use_imr: true, use_imc: true, lambda_ct: 0.2, lambda_mr: 0.2, alpha1: 0.8, alpha2: 0.8}
"""


@pytest.mark.parametrize(("stem", "changes"), [
    ("cmfnet_autobg", {"name": "CmFNet (AutoBG)", "scribble_variant": "autobg"}),
    ("cmfnet_fullmask", {"supervision": "mask", "table": "table3"})])
def test_cmfnet_variant_cards_resolve_to_the_full_cards_they_replaced(stem: str, changes: dict,
                                                                      tmp_path: Path) -> None:
    """The small overrides resolve to what the former full cards (written out here) gave: every
    card key, and the params the plugin trains with."""
    import yaml

    from cmfnet.training.plugins import load_method

    former = tmp_path / f"{stem}.yaml"
    former.write_text(yaml.safe_dump({**yaml.safe_load(FORMER_CMFNET_CARD), **changes}))
    old, new = load_card(former), load_card(REPO / "methods" / f"{stem}.yaml")
    assert new.to_dict() == {**old.to_dict(), "params": new.params}
    assert load_method(new).params == load_method(old).params


def test_any_card_may_extend_another_and_list_only_what_it_changes(tmp_path: Path) -> None:
    from cmfnet.training.cards import method_ids
    from cmfnet.errors import InputError

    (tmp_path / "base.yaml").write_text("name: Base\nplugin: baselines.em\nnetwork: {arch: vnet, width: 8}\n"
                                        "params: {weight: 0.2}\ntrain: {iterations: 5}\ndescription: b\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\nnetwork: {dropout: 0.1}\nparams: {rampup: 0.3}\n")
    (tmp_path / "leaf.yaml").write_text("extends: mid.yaml\nname: Leaf\nsupervision: mask\n")
    leaf = load_card(tmp_path / "leaf.yaml", ["network.width=4"])
    assert (leaf.id, leaf.name, leaf.plugin, leaf.supervision) == ("leaf", "Leaf", "baselines.em", "mask")
    assert leaf.network == {"arch": "vnet", "width": 4, "dropout": 0.1}  # mappings merge key by key
    assert leaf.params == {"weight": 0.2, "rampup": 0.3} and leaf.train == {"iterations": 5}
    assert method_ids(tmp_path / "leaf.yaml") == ["leaf"]  # a card, not a variant file
    (tmp_path / "loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\nname: L\nplugin: baselines.pce\n")
    with pytest.raises(InputError, match="extends itself through loop.yaml -> loop2.yaml -> loop.yaml"):
        load_card(tmp_path / "loop.yaml")
    (tmp_path / "typo.yaml").write_text("extends: base.yaml\nfusion: input\n")
    with pytest.raises(InputError, match=r"unknown card keys \['fusion'\]"):
        load_card(tmp_path / "typo.yaml")


def test_card_keys_are_the_card_fields_and_round_trip() -> None:
    """to_dict, from_dict and the checks all come from the Card fields: a model.pt card (also one an
    older version wrote, with its `fusion` key) loads back to the same card."""
    from cmfnet.training.cards import CARD_KEYS, Card

    card = load_card(REPO / "methods" / "table4.yaml", variant="ct3")
    stored = card.to_dict()
    assert list(stored) == ["id", *CARD_KEYS] and "fusion" not in CARD_KEYS
    again = Card.from_dict({**stored, "fusion": "input"}, card.path)
    assert again.to_dict() == {**stored, "id": "table4"}  # the variant is the caller's, not the card's
