"""`cmfnet evaluate --fold`: a fold's rows come from exactly its test cases, whatever else --pred holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from cmfnet.cli import main
from cmfnet.data.dataset import Dataset


def _predictions_of_every_case(dataset_dir: Path, out: Path) -> None:
    """Stand-in predictions (the reference itself) for all cases, as a by-hand run into one folder leaves."""
    out.mkdir()
    for label in (dataset_dir / "labelsTr").glob("*.nii.gz"):
        shutil.copy(label, out / label.name)


def test_fold_evaluates_its_test_cases_only(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    pred = tmp_path / "pred"
    _predictions_of_every_case(tiny_dataset, pred)
    out = tmp_path / "fold1.csv"
    assert main(["evaluate", "--pred", str(pred), "--dataset", str(tiny_dataset), "--fold", "1",
                 "--out", str(out)]) == 0
    test_cases = sorted(Dataset(tiny_dataset).split(1)["test"])
    assert sorted(pd.read_csv(out)["case"].unique()) == test_cases
    assert "leaving out" in capsys.readouterr().out


def test_fold_with_a_missing_prediction_is_refused(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    pred = tmp_path / "pred"
    _predictions_of_every_case(tiny_dataset, pred)
    missing = sorted(Dataset(tiny_dataset).split(0)["test"])[0]
    (pred / f"{missing}.nii.gz").unlink()
    out = tmp_path / "fold0.csv"
    assert main(["evaluate", "--pred", str(pred), "--dataset", str(tiny_dataset), "--fold", "0",
                 "--out", str(out)]) == 2
    assert f"{missing}.nii.gz: prediction file not found" in capsys.readouterr().err
    assert not out.exists()


def test_fold_out_of_range_or_without_dataset_is_one_line(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    pred = tmp_path / "pred"
    _predictions_of_every_case(tiny_dataset, pred)
    for extra in (["--dataset", str(tiny_dataset), "--fold", "7"], ["--ref", str(tiny_dataset / "labelsTr"),
                                                                    "--fold", "0"]):
        assert main(["evaluate", "--pred", str(pred), "--out", str(tmp_path / "x.csv"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "fold" in err
