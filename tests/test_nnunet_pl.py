"""nnU-Net+pL end to end on the CPU: the real nnunetv2 exports, plans, preprocesses, trains (1 epoch
of 2 iterations), predicts through ``cmfnet predict`` and is scored by ``cmfnet evaluate``.

Skipped where the nnunet extra is not installed. Measured on an otherwise idle 2-core machine,
torch on one thread: 42 s for this file, of which training (export, fingerprint, plan,
preprocess, 2 iterations) 36 s and predict + evaluate 3 s. nnU-Net's fingerprint and
preprocessing run in worker processes, so a loaded machine stretches it a lot.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cmfnet import cli
from cmfnet.data.dataset import Dataset
from cmfnet.data.io import IGNORE, read_image
from cmfnet.errors import InputError

from conftest import make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA")
SMOKE = ["params.epochs=1", "params.iterations_per_epoch=2", "params.val_iterations_per_epoch=1",
         "params.data_workers=0", "params.keep_work=true"]

needs_nnunet = pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is None,
                                  reason="nnunetv2 is not installed (pip install -e '.[nnunet]')")


def _sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


@pytest.fixture
def nnunet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin points nnU-Net's folders into the model folder: restore them after the test."""
    for name in NNUNET_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
@needs_nnunet
def test_nnunet_pl_trains_predicts_and_is_evaluated_like_every_row(tmp_path: Path, nnunet_env: None) -> None:
    data = make_tiny_dataset(tmp_path / "tiny", n_cases=6, folds=3)
    dataset = Dataset(data)
    split = dataset.split(0)
    out = tmp_path / "model"
    started = time.monotonic()
    # a preset's network: block (config/config.yaml's) must neither break nor change the row
    assert cli.main(["train", "--card", str(REPO / "methods" / "nnunet_pl.yaml"), "--dataset", str(data),
                     "--fold", "0", "--out", str(out), "--device", "cpu", "--threads", "1",
                     *_sets([*SMOKE, "network.width=8", "network.dropout=0.0"])]) == 0
    trained = time.monotonic()

    # the export: the fold's train and val cases only, 255 -> the ignore label, fold 0 = our fold
    raw = out / "nnunet" / "raw" / "Dataset999_cmfnet"
    nnunet_json = json.loads((raw / "dataset.json").read_text())
    assert nnunet_json["labels"] == {"background": 0, "tumour": 1, "ignore": 2}
    assert nnunet_json["channel_names"] == {"0": "CT", "1": "MR"}
    exported = sorted(p.name.removesuffix(".nii.gz") for p in (raw / "labelsTr").iterdir())
    assert exported == sorted(set(split["train"]) | set(split["val"]))
    assert not set(split["test"]) & {p.name.split("_0")[0] for p in (raw / "imagesTr").iterdir()}
    assert len(list((raw / "imagesTr").iterdir())) == 2 * len(exported)
    case = split["train"][0]
    label, _ = read_image(raw / "labelsTr" / f"{case}.nii.gz")
    scribble = dataset.load_scribble(case, "sim")
    assert np.array_equal(label == 2, scribble == IGNORE)
    assert np.array_equal(label[scribble != IGNORE], scribble[scribble != IGNORE])
    preprocessed = out / "nnunet" / "preprocessed" / "Dataset999_cmfnet"
    splits = json.loads((preprocessed / "splits_final.json").read_text())
    assert splits == [{"train": split["train"], "val": split["val"]}]
    # the fingerprint (CT clipping percentiles under the labels) saw the training cases only
    fingerprint = json.loads((preprocessed / "dataset_fingerprint.json").read_text())
    assert len(fingerprint["spacings"]) == len(split["train"])

    # the training log `cmfnet curves` reads for every model: one row per nnU-Net epoch
    with open(out / "train_log.csv", newline="") as handle:
        log_rows = list(csv.DictReader(handle))
    assert [row["iteration"] for row in log_rows] == ["2"] and "val_dice" in log_rows[0]

    # our model folder: weights_only=True loads it; no nnU-Net pickle is needed to predict
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert state["meta"]["external"]["configuration"] == "3d_fullres"
    assert all(isinstance(v, torch.Tensor) for v in state["weights"].values())
    pred = tmp_path / "pred"
    assert cli.main(["predict", "--model", str(out), "--dataset", str(data), "--out", str(pred),
                     "--device", "cpu", "--threads", "1"]) == 0
    assert sorted(p.name for p in pred.iterdir()) == sorted(f"{c}.nii.gz" for c in split["test"])
    for test_case in split["test"]:
        labels, geometry = read_image(pred / f"{test_case}.nii.gz")
        assert geometry.same_grid(dataset.geometry(test_case)) and set(np.unique(labels)) <= {0, 1}
    metrics = tmp_path / "metrics.csv"
    assert cli.main(["evaluate", "--pred", str(pred), "--dataset", str(data), "--out", str(metrics)]) == 0
    with open(metrics, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({row["case"] for row in rows}) == sorted(split["test"])
    print(f"nnU-Net+pL smoke: train {trained - started:.0f} s, predict + evaluate "
          f"{time.monotonic() - trained:.0f} s")

    # the preset's network: block is no setting of this row: another width finds the model done
    assert cli.main(["train", "--card", str(REPO / "methods" / "nnunet_pl.yaml"), "--dataset", str(data),
                     "--fold", "0", "--out", str(out), "--device", "cpu", *_sets([*SMOKE, "network.width=4"])]) == 0


def test_nnunet_cards_load_and_ignore_the_presets_network_block() -> None:
    """Without nnunetv2 too: the cards resolve, their network block is no setting of the model."""
    from cmfnet.provenance import training_settings
    from cmfnet.training.cards import load_card
    from cmfnet.training.contract import ExternalMethod
    from cmfnet.training.plugins import load_method

    for stem, supervision in (("nnunet_pl", "scribble"), ("nnunet_fullmask", "mask")):
        narrow = load_card(REPO / "methods" / f"{stem}.yaml", ["network.width=8", "network.dropout=0.0"])
        wide = load_card(REPO / "methods" / f"{stem}.yaml", ["network.width=16"])
        assert isinstance(load_method(narrow), ExternalMethod) and narrow.supervision == supervision
        assert training_settings(narrow, {}, 1) == training_settings(wide, {}, 1)
    assert load_card(REPO / "methods" / "nnunet_fullmask.yaml").table == "table3"


def test_a_missing_nnunetv2_is_one_input_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from baselines.nnunet import MISSING, require_nnunet

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "nnunetv2" else real_find_spec(name, *args))
    with pytest.raises(InputError, match=r"pip install -e '\.\[nnunet\]'") as err:
        require_nnunet("methods/nnunet_pl.yaml")
    assert MISSING in str(err.value)
