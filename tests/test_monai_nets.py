"""Table III's MONAI peers: each builds through the registry and maps a patch to logits of its
shape, bad options are refused in one line, and a Table III row trains through the real engine."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cmfnet.data.dataset import Dataset
from cmfnet.errors import InputError
from cmfnet.provenance import network_overrides, trained_as
from cmfnet.training.cards import card_path_for_id, check_network_options, load_card, method_ids
from cmfnet.training.config import TrainConfig
from cmfnet.training.engine import Trainer
from cmfnet.training.model import TrainedModel
from cmfnet.training.networks import build_network
from cmfnet.training.plugins import load_method

METHODS = Path(__file__).resolve().parents[1] / "methods"
CONFIG = METHODS.parent / "config"
PATCH = [16, 32, 32]
#: tiny widths and a tiny transformer, so that each network builds and runs in well under a second
TINY = {
    "monai_unet": {"width": 2, "downsamplings": 4, "num_res_units": 1},
    "segresnet": {"width": 2, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
    "dynunet": {"width": 2, "downsamplings": 4, "res_block": True},
    "unetplusplus": {"width": 2},
    "unetr": {"width": 2, "img_size": PATCH, "hidden_size": 12, "num_heads": 2, "mlp_dim": 24},
}
TINY_UNETR = ["network.width=2", "network.hidden_size=12", "network.num_heads=2", "network.mlp_dim=24"]


@pytest.mark.parametrize("arch", sorted(TINY))
def test_each_peer_builds_through_the_registry_and_keeps_the_patch_shape(arch: str) -> None:
    options = {"arch": arch, **TINY[arch]}
    check_network_options("card", options)  # what a card check sees: names, types, ranges
    model = build_network(options, in_channels=2, num_classes=3)
    assert all(side % model.size_divisor == 0 for side in PATCH)
    logits = model(torch.randn(2, 2, *PATCH))
    assert logits.shape == (2, 3, *PATCH)


@pytest.mark.parametrize(("options", "words"), [
    ({"arch": "segresnet", "widht": 8}, ["network.widht", "not an option of network 'segresnet'", "width"]),
    ({"arch": "monai_unet", "num_res_units": -1}, ["network.num_res_units=-1", ">= 0"]),
    ({"arch": "dynunet", "res_block": "yes"}, ["network.res_block='yes'", "true or false"]),
    ({"arch": "unetr", "hidden_size": 0, "img_size": PATCH}, ["network.hidden_size=0", ">= 1"]),
])
def test_a_bad_option_is_refused_in_one_line_before_anything_is_built(options: dict, words: list[str]) -> None:
    with pytest.raises(InputError) as err:
        check_network_options("card.yaml", options)
    message = str(err.value)
    assert "\n" not in message and all(word in message for word in words), message


@pytest.mark.parametrize(("options", "words"), [
    ({"arch": "unetr"}, ["img_size", "patch_size"]),
    ({"arch": "unetr", "img_size": [16, 24, 32]}, ["img_size", "multiple of 16"]),
    ({"arch": "segresnet", "blocks_down": [1, 2, 2], "blocks_up": [1, 1, 1]}, ["blocks_up", "2"]),
])
def test_option_combinations_the_constructor_refuses_name_the_option(options: dict, words: list[str]) -> None:
    """The engine turns a constructor's ValueError into one InputError line (``network: ...``)."""
    with pytest.raises(ValueError) as err:
        build_network(options, in_channels=2, num_classes=2)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_unetr_refuses_an_input_other_than_its_img_size() -> None:
    model = build_network({"arch": "unetr", **TINY["unetr"]}, in_channels=2, num_classes=2)
    with pytest.raises(ValueError, match=r"built for \[16, 32, 32\].*set network.img_size to train.patch_size"):
        model(torch.randn(1, 2, 16, 64, 64))


@pytest.mark.parametrize(("module", "arch", "pin"), [("monai", "segresnet", "monai==1.6.1"),
                                                     ("einops", "unetr", "einops==0.8.2")])
def test_without_a_dependency_building_a_peer_says_what_to_install(
        module: str, arch: str, pin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")] or [module]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    with pytest.raises(InputError) as err:
        build_network({"arch": arch, **TINY[arch]}, in_channels=2, num_classes=2)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{module}: not installed")
    assert f"pip install {pin}" in str(err.value)


@pytest.mark.parametrize("preset", ["config.yaml", "paper.yaml"])
def test_table3_rows_load_under_each_preset_and_the_vnet_row_reads_fullysup_s_model(preset: str) -> None:
    """A preset's network: block ({width: 8, dropout: 0}) reaches every row, as the pipeline applies it."""
    overrides = network_overrides(yaml.safe_load((CONFIG / preset).read_text())["network"])
    ids = method_ids(METHODS / "table3.yaml")
    assert ids == ["table3.vnet", "table3.resunet", "table3.unetpp", "table3.unetr", "table3.segresnet",
                   "table3.dynunet"]
    for method_id in ids:
        path, variant, _ = card_path_for_id(METHODS, method_id)
        card = load_card(path, overrides, variant=variant)
        load_method(card)  # checks the network options against the constructor
        assert card.table == "table3" and card.supervision == "mask" and card.plugin == "baselines.pce"
    assert trained_as(METHODS, "table3.vnet", {}, 1) == "fullysup"
    assert trained_as(METHODS, "table3.unetr", {}, 1) == "table3.unetr"
    assert load_card(METHODS / "cmfnet_fullmask.yaml").table == "table3"


def test_a_table3_row_trains_through_the_engine_and_reloads(tmp_path: Path, tiny_dataset: Path) -> None:
    """UNETR, the peer with the strictest input: the card's img_size is the presets' patch."""
    card = load_card(METHODS / "table3.yaml", TINY_UNETR, variant="unetr")
    config = TrainConfig(iterations=2, batch_size=1, patch_size=PATCH, val_interval=2, checkpoint_interval=2,
                         log_interval=1)
    Trainer(card, Dataset(tiny_dataset), 0, tmp_path / "out", config, device="cpu").fit()
    trained = TrainedModel.load(tmp_path / "out")
    image = np.random.default_rng(0).normal(size=(2, 16, 40, 36)).astype(np.float32)
    labels = trained.segment(image, torch.device("cpu"))
    assert labels.shape == (16, 40, 36)
