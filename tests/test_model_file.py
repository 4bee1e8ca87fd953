"""model.pt is read only when it is what it claims, and CmFNet's card is refused at each param's
edge, each with its file named. Written for the mutation survivors of 2026-12-05
(docs/testing.md): each assertion failed on a mutant that changed the path, text or bound."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from cmfnet.errors import InputError
from cmfnet.training.cards import load_card
from cmfnet.training.model import FORMAT_VERSION, MODEL_META_KEYS, TrainedModel, read_model_file
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
