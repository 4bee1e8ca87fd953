"""model.pt is read only when it is what it claims, and CmFNet's card is refused at each param's
edge, each with its file named. Written for the mutation survivors of 2026-12-05
(docs/testing.md): each assertion failed on a mutant that changed the path, text or bound."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cmfnet import __version__
from cmfnet.data.dataset import Dataset
from cmfnet.errors import InputError
from cmfnet.training.cards import load_card
from cmfnet.training.model import (FORMAT_VERSION, MODEL_META_KEYS, TrainedModel, _version_tuple,
                                   _weights_problem, model_meta, read_model_file, versions,
                                   write_trained_model)
from cmfnet.training.config import TrainConfig
from cmfnet.training.plugins import load_method

REPO = Path(__file__).resolve().parents[1]


def refusal(path: Path) -> tuple[str, str]:
    with pytest.raises(InputError) as error:
        read_model_file(path)
    return error.value.path, error.value.problem


def test_a_missing_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        TrainedModel.load(tmp_path)
    assert (error.value.path, error.value.problem) == (str(tmp_path / "model.pt"),
                                                       "no trained model here (model.pt missing)")


def test_a_file_that_needs_more_than_weights_only_is_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"meta": {}, "payload": argparse.Namespace(x=1)}, path)  # an object: needs full unpickling
    assert refusal(path) == (str(path), "cannot load model (UnpicklingError); it is not a model.pt that "
                                        "loads with weights_only=True")


def test_structure_errors_are_named(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save([1, 2], path)
    assert refusal(path) == (str(path), "not a cmfnet model: no 'meta' record")
    meta = {key: None for key in MODEL_META_KEYS}
    for weights in (None, {"w": 1.0}, [torch.zeros(1)]):
        torch.save({"format": FORMAT_VERSION, "meta": meta, "weights": weights}, path)
        assert refusal(path) == (str(path), "no 'weights' record of tensors")
    torch.save({"format": FORMAT_VERSION, "meta": {k: None for k in list(MODEL_META_KEYS)[:-2]},
                "weights": {}}, path)
    assert refusal(path) == (str(path), f"meta lacks {', '.join(list(MODEL_META_KEYS)[-2:])}: written by an "
                                        f"older cmfnet? retrain the model")


@pytest.mark.parametrize("override, problem", [
    ("params.output=both", "params.output must be one of ['mm', 'ct', 'mr'], got 'both'"),
    ("params.lambda_ct=-0.1", "params.lambda_ct must be a number >= 0, got -0.1"),
    ("params.crf_radius=0", "params.crf_radius must be >= 1 and the CRF sigmas > 0"),
    ("params.crf_sigma_xy_mm=0", "params.crf_radius must be >= 1 and the CRF sigmas > 0"),
    ("params.crf_sigma_intensity=0", "params.crf_radius must be >= 1 and the CRF sigmas > 0"),
    ("params.crf_downsample=[1,0,2]", "params.crf_downsample must be three factors >= 1 (z, y, x), got [1, 0, 2]"),
])
def test_cmfnet_params_are_refused_at_their_edge_with_the_card_named(override: str, problem: str) -> None:
    card = load_card(REPO / "methods" / "cmfnet.yaml", [override])
    with pytest.raises(InputError) as error:
        load_method(card)
    assert error.value.path == str(card.path) and error.value.problem == problem


@pytest.mark.parametrize("override", ["params.crf_radius=1", "params.crf_sigma_xy_mm=0.5",
                                      "params.crf_sigma_intensity=0.01", "params.lambda_ct=0"])
def test_cmfnet_params_at_their_edge_are_accepted(override: str) -> None:
    load_method(load_card(REPO / "methods" / "cmfnet.yaml", [override]))


def test_switching_every_term_off_is_refused() -> None:
    card = load_card(REPO / "methods" / "cmfnet.yaml",
                     ["params.use_ssl=false", "params.use_imr=false", "params.use_imc=false"])
    with pytest.raises(InputError) as error:
        load_method(card)
    assert (error.value.path, error.value.problem) == (
        str(card.path), "params switch every loss term off (use_ssl, use_imr, use_imc)")


# --- a model.pt written by hand (no training), for TrainedModel.load's own checks ---------------

def write_model(out: Path, card_file: str = "cmfnet.yaml", **meta_changes: object) -> Path:
    """A model.pt of the card's untrained network, as the engine writes it, with ``meta_changes``."""
    card = load_card(REPO / "methods" / card_file)
    weights = load_method(card).build_network(2, 2).state_dict()
    meta = {"card": card.to_dict(), "card_path": str(card.path), "channels": [0, 1],
            "channel_names": ["CT", "MR"], "num_classes": 2, "normalization": {},
            "patch_size": [8, 16, 16], "size_divisor": [8, 16, 16],
            "train": {"batch_size": 2, "amp": False}, "fold": 0, "versions": versions()} | meta_changes
    write_trained_model(out, weights, meta)
    return out / "model.pt"


def load_refusal(model_dir: Path, overrides: tuple[str, ...] = ()) -> tuple[str, str]:
    with pytest.raises(InputError) as error:
        TrainedModel.load(model_dir, overrides)
    return error.value.path, error.value.problem


def test_versions_record_every_library_under_its_name() -> None:
    import platform

    import SimpleITK

    assert versions() == {"cmfnet": __version__, "python": platform.python_version(),
                          "torch": str(torch.__version__), "cuda": torch.version.cuda or "none",
                          "numpy": np.__version__, "simpleitk": SimpleITK.Version.VersionString()}


@pytest.mark.parametrize("text, parsed", [
    ("0.10.2", (0, 10, 2)), ("2.13.0+cpu", (2, 13, 0)), ("1.2+cu121", (1, 2)), ("1.2.3.4", (1, 2, 3)),
])
def test_release_numbers_ignore_the_local_part_and_a_fourth_number(text: str, parsed: tuple) -> None:
    assert _version_tuple(text) == parsed


def test_weights_that_do_not_fit_are_listed_three_at_a_time() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))  # 0.weight 0.bias 1.weight 1.bias
    assert _weights_problem(net, {}) == "missing 0.weight, 0.bias, 1.weight (+1 more)"
    weights = dict(net.state_dict())
    assert _weights_problem(net, weights) is None
    del weights["1.bias"]
    weights["extra"] = torch.zeros(1)
    weights["0.bias"] = torch.zeros(4)
    assert _weights_problem(net, weights) == "missing 1.bias; unexpected extra; shape of 0.bias (4,) not (3,)"
    three = {k: v for k, v in net.state_dict().items() if k == "0.weight"}
    assert _weights_problem(net, three) == "missing 0.bias, 1.weight, 1.bias"


def test_a_model_loads_and_names_its_file_when_an_image_lacks_a_channel(tmp_path: Path) -> None:
    path = write_model(tmp_path)
    model = TrainedModel.load(tmp_path)
    assert model.path == path and model.method.params["output"] == "mm"
    with pytest.raises(InputError) as error:
        model.segment(np.zeros((1, 8, 16, 16), np.float32), torch.device("cpu"))
    assert (error.value.path, error.value.problem) == (str(path), "image has 1 channels, model uses [0, 1]")


def test_set_changes_an_inference_param_and_nothing_else(tmp_path: Path) -> None:
    write_model(tmp_path)
    model = TrainedModel.load(tmp_path, ("params.output=ct",))
    assert model.method.params["output"] == "ct"
    assert load_refusal(tmp_path, ("params.lambda_ct=0.5",)) == (
        "--set", "'params.lambda_ct' would change what was trained; a trained 'cmfnet' model can only "
                 "change: params.output")
    assert load_refusal(tmp_path, ("output=ct",)) == (
        "--set", "'output' would change what was trained; a trained 'cmfnet' model can only change: params.output")
    assert load_refusal(tmp_path, ("params.output",))[0] == "--set"


def test_set_on_a_model_without_inference_params_says_none(tmp_path: Path) -> None:
    write_model(tmp_path, "pce.yaml")
    assert load_refusal(tmp_path, ("params.output=ct",)) == (
        "--set", "'params.output' would change what was trained; a trained 'pce' model can only change: none")


def test_a_model_whose_card_is_broken_names_the_model_file(tmp_path: Path) -> None:
    card = load_card(REPO / "methods" / "cmfnet.yaml").to_dict()
    path = write_model(tmp_path, card=["not", "a", "mapping"])
    assert load_refusal(tmp_path) == (str(path), "meta 'card' is not a mapping")
    write_model(tmp_path, card=card | {"params": card["params"] | {"lambda_ct": -1.0}})
    assert load_refusal(tmp_path) == (str(path), "its card: params.lambda_ct must be a number >= 0, got -1.0")
    write_model(tmp_path, channels=[0, 1, 2], channel_names=["CT", "MR", "PET"])  # CmFNet takes two
    found = load_refusal(tmp_path)
    assert found[0] == str(path) and found[1].startswith("its card's network cannot be built (") and "3" in found[1]


def test_model_meta_states_what_every_trainer_states(tiny_dataset: Path) -> None:
    """One schema for the engine and external frameworks; ``fields`` come last and may add keys."""
    card = load_card(REPO / "methods" / "pce.yaml")
    dataset = Dataset(tiny_dataset)
    config = TrainConfig(seed=3)
    meta = model_meta(card, config, dataset, 1, [1], extra="x")
    assert meta == {"card": card.to_dict(), "card_path": str(card.path), "method_id": "pce",
                    "train": config.settings(), "fold": 1, "dataset": dataset.name,
                    "dataset_path": str(dataset.root), "num_classes": dataset.num_classes, "channels": [1],
                    "channel_names": [dataset.channels[1]],
                    "normalization": dataset.meta.get("normalization", {}), "seed": 3,
                    "versions": versions(), "format": FORMAT_VERSION, "extra": "x"}
    del dataset.meta["normalization"]
    assert model_meta(card, config, dataset, 1, [1])["normalization"] == {}


def test_written_model_round_trips(tmp_path: Path) -> None:
    """meta.json beside model.pt holds the same record; the weights come back as written, on the CPU."""
    path = write_model(tmp_path, "pce.yaml")
    state = read_model_file(path)
    assert set(state) == {"format", "meta", "weights"} and state["format"] == FORMAT_VERSION
    assert json.loads((tmp_path / "meta.json").read_text()) == state["meta"]
    expected = load_method(load_card(REPO / "methods" / "pce.yaml")).build_network(2, 2).state_dict()
    assert set(state["weights"]) == set(expected)
    assert all(v.device.type == "cpu" for v in state["weights"].values())


def test_set_that_is_not_key_value_is_refused_with_the_reason(tmp_path: Path) -> None:
    write_model(tmp_path)
    assert load_refusal(tmp_path, ("params.output",)) == (
        "--set", "override 'params.output' is not of the form key=value")


@pytest.mark.parametrize("channels", [["CT"], ["MR", "CT"], ["CT", "T2"]])
def test_a_dataset_without_the_models_channels_is_named(channels: list[str], tmp_path: Path) -> None:
    """Fewer channels, another order or another name: dataset.json is named with both lists."""
    write_model(tmp_path)
    model = TrainedModel.load(tmp_path)
    dataset = SimpleNamespace(channels=channels, num_channels=len(channels), root=tmp_path / "data")
    with pytest.raises(InputError) as error:
        model.check_dataset(dataset)
    assert (error.value.path, error.value.problem) == (
        str(tmp_path / "data" / "dataset.json"), f"channels {channels} do not provide the model's ['CT', 'MR']")
    model.check_dataset(SimpleNamespace(channels=["CT", "MR", "PET"], num_channels=3, root=tmp_path))
