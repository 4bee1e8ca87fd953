"""The train block's checks at their edges, and the precedence engine < preset < card.

Each range is tried just inside and just outside its bound, so a bound moved by one (``>=`` for
``>``) or a rule pointed at the wrong key fails here; each error line must name the source, the
key and the rule, because that line is all a user sees."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cmfnet.errors import InputError
from cmfnet.training.cards import load_card
from cmfnet.training.config import TrainConfig, resolve_train_config

# key: (valid values at the edge, invalid values just past it, the rule's words in the message)
EDGES: dict[str, tuple[list[Any], list[Any], str]] = {
    "iterations": ([1], [0], ">= 1"),
    "epochs": ([None, 1], [0], ">= 1 or null"),
    "iterations_per_epoch": ([None, 1], [0], ">= 1 or null"),
    "batch_size": ([1], [0], ">= 1"),
    "patch_size": ([[1, 1, 1]], [[0, 4, 4], [4, 4], [4, 4, 4, 4]], "three positive sides (z, y, x)"),
    "optimizer": (["adam", "sgd"], ["rmsprop"], "adam or sgd"),
    "lr": ([1e-9], [0.0, -1e-3], "> 0"),
    "weight_decay": ([0.0], [-1e-9], ">= 0"),
    "momentum": ([0.0, 0.999], [1.0, -0.1], "in [0, 1)"),
    "schedule": (["constant", "poly", "auto"], ["cosine"], "constant, poly or auto"),
    "fg_fraction": ([0.0, 1.0], [-0.01, 1.01], "in [0, 1]"),
    "val_interval": ([0], [-1], ">= 0 (0: validate only at the end)"),
    "val_reference": (["label", "scribble"], ["mask"], "label or scribble"),
    "val_overlap": ([0.0, 0.99], [1.0, -0.1], "in [0, 1)"),
    "selection": (["best", "last", "ema"], ["worst"], "best, last or ema"),
    "ema_decay": ([0.001, 0.999], [0.0, 1.0], "in (0, 1)"),
    "checkpoint_interval": ([1], [0], ">= 1"),
    "log_interval": ([1], [0], ">= 1"),
    "seed": ([0], [-1], ">= 0"),
    "labelled_fraction": ([None, 0.01, 0.99], [0.0, 1.0], "in (0, 1) or null"),
    "labelled_batch_size": ([None, 1], [0], ">= 1 or null"),
    "labelled_seed": ([0], [-1], ">= 0"),
}


def test_every_ranged_key_is_covered() -> None:
    from cmfnet.training.config import _TRAIN_RANGES
    assert set(EDGES) == set(_TRAIN_RANGES)


@pytest.mark.parametrize("key", sorted(EDGES))
def test_edge_values_pass_and_values_past_the_edge_are_named(key: str) -> None:
    valid, invalid, words = EDGES[key]
    for value in valid:
        assert getattr(TrainConfig.from_dict({key: value}, "preset.yaml"), key) == value
    for value in invalid:
        with pytest.raises(InputError) as caught:
            TrainConfig.from_dict({key: value}, "preset.yaml")
        assert str(caught.value) == f"preset.yaml: train.{key}={value!r}: must be {words}"


@pytest.mark.parametrize("key, value, expected", [
    ("iterations", "300", "expected an int"), ("lr", "1e-3", "1.0e-3"), ("amp", "yes", "true or false"),
    ("patch_size", [16, 32.5, 32], "expected a list of ints"), ("labelled_fraction", "0.1", "1.0e-3")])
def test_wrong_types_are_named_with_their_key(key: str, value: Any, expected: str) -> None:
    with pytest.raises(InputError, match=rf"^preset\.yaml: train\.{key}=.*{re.escape(expected)}"):
        TrainConfig.from_dict({key: value}, "preset.yaml")


def test_unknown_keys_are_listed_sorted() -> None:
    with pytest.raises(InputError) as caught:
        TrainConfig.from_dict({"lr": 1e-3, "warmup": 5, "betas": [0.9, 0.99]}, "preset.yaml")
    assert str(caught.value) == "preset.yaml: unknown train options ['betas', 'warmup']"


def test_the_default_source_is_named_when_none_is_given(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="^train config: train.lr"):
        TrainConfig.from_dict({"lr": 0.0})
    with pytest.raises(InputError, match="^train config: train.lr"):
        resolve_train_config(load_card(card_with_train(tmp_path, "")), {"lr": 0.0})


def card_with_train(tmp_path: Path, train: str) -> Path:
    path = tmp_path / "card.yaml"
    path.write_text(f"name: pCE\nplugin: baselines.pce\nnetwork: {{arch: vnet, width: 2}}\n{train}")
    return path


def test_card_overrides_preset_overrides_engine_defaults(tmp_path: Path) -> None:
    card = load_card(card_with_train(tmp_path, "train: {lr: 0.01}\n"))
    config = resolve_train_config(card, {"lr": 0.003, "iterations": 7}, "config.yaml")
    assert (config.lr, config.iterations, config.batch_size) == (0.01, 7, TrainConfig().batch_size)
    assert resolve_train_config(card, None).lr == 0.01


def test_a_bad_preset_value_is_reported_against_the_preset_and_a_bad_card_value_against_the_card(
        tmp_path: Path) -> None:
    card_path = card_with_train(tmp_path, "train: {iterations: 0}\n")
    card = load_card(card_path)
    with pytest.raises(InputError, match=r"^config\.yaml: train\.lr"):
        resolve_train_config(card, {"lr": -1.0}, "config.yaml")
    with pytest.raises(InputError) as caught:
        resolve_train_config(card, {"lr": 0.003}, "config.yaml")
    assert caught.value.path == str(card_path) and "train.iterations=0" in caught.value.problem


def test_total_iterations_counts_epochs_of_the_training_cases() -> None:
    assert TrainConfig(iterations=42).total_iterations(10) == 42
    assert TrainConfig(epochs=3, batch_size=4).total_iterations(10) == 9  # ceil(10 / 4) per epoch
    assert TrainConfig(epochs=3, iterations_per_epoch=5).total_iterations(10) == 15


def test_settings_hold_the_semi_keys_only_when_the_regime_is_on() -> None:
    plain = TrainConfig().settings()
    assert "labelled_fraction" not in plain and "labelled_seed" not in plain and plain["lr"] == 1e-3
    semi = TrainConfig(labelled_fraction=0.2).settings()
    assert semi["labelled_fraction"] == 0.2 and semi["labelled_seed"] == 0 and "labelled_batch_size" in semi
