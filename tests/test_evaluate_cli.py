"""`cmfnet evaluate --fold`: a fold's rows come from exactly its test cases, whatever else --pred holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmfnet.cli import main
from cmfnet.data.dataset import Dataset
from cmfnet.data.io import read_image, write_image


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


def test_without_reference_or_dataset_the_command_says_which_to_give(tmp_path: Path, capsys) -> None:
    (tmp_path / "pred").mkdir()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--out", str(tmp_path / "x.csv")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--ref: give a reference folder with --ref, or a dataset with --dataset")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path), "--fold", "0",
                 "--out", str(tmp_path / "x.csv")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--fold: needs --dataset (the fold's test cases come from its splits)")


def test_tags_lead_the_columns_in_order_and_the_summary_gives_each_class(tiny_dataset: Path, tmp_path: Path,
                                                                         capsys) -> None:
    pred = tmp_path / "pred"
    _predictions_of_every_case(tiny_dataset, pred)
    out = tmp_path / "rows.csv"
    assert main(["evaluate", "--pred", str(pred), "--dataset", str(tiny_dataset), "--out", str(out),
                 "--tag", "method=pce", "--tag", "seed=3", "--tag", " config = a=b"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns[:4]) == ["method", "seed", "config", "case"]
    assert (table["config"] == " a=b").all()
    assert (table["method"] == "pce").all() and (table["seed"] == 3).all()
    assert table["cmfnet_version"].notna().all() and set(table["class"]) == {"tumour"}
    cases = len(list((tiny_dataset / "labelsTr").glob("*.nii.gz")))
    assert capsys.readouterr().out.strip() == f"evaluate: {cases} cases -> {out}; mean DSC: tumour 1.0000"


def test_leaving_out_lists_five_cases_then_dots(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    pred = tmp_path / "pred"
    _predictions_of_every_case(tiny_dataset, pred)
    test_cases = set(Dataset(tiny_dataset).split(0)["test"])
    extra = sorted(p.name[:-7] for p in pred.glob("*.nii.gz") if p.name[:-7] not in test_cases)
    assert len(extra) == 5  # the tiny dataset: 8 cases, 3 of them fold 0's test set
    args = ["evaluate", "--pred", str(pred), "--dataset", str(tiny_dataset), "--fold", "0", "--out",
            str(tmp_path / "x.csv")]
    assert main(args) == 0
    line = f"evaluate: leaving out 5 prediction(s) of cases outside fold 0's test set: {', '.join(extra)}"
    assert capsys.readouterr().out.splitlines()[0] == line
    shutil.copy(pred / f"{extra[0]}.nii.gz", pred / "zz_extra.nii.gz")
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"evaluate: leaving out 6 prediction(s) of cases outside fold 0's test set: {', '.join(extra)} ...")


def test_a_tag_repeated_or_named_like_a_column_is_refused(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    pred = tmp_path / "pred"
    _predictions_of_every_case(tiny_dataset, pred)
    for tags in (["--tag", "method=a", "--tag", "method=b"], ["--tag", "dsc=1"], ["--tag", "case=x"]):
        out = tmp_path / "x.csv"
        assert main(["evaluate", "--pred", str(pred), "--dataset", str(tiny_dataset), "--out", str(out),
                     *tags]) == 2
        err = capsys.readouterr().err.strip()
        assert "--tag: tag keys must be unique and not a metric column" in err and not out.exists()
    for bad in ("=x", "novalue"):
        with pytest.raises(SystemExit):
            main(["evaluate", "--pred", str(pred), "--dataset", str(tiny_dataset), "--out",
                  str(tmp_path / "y.csv"), "--tag", bad])
        assert f"--tag: expected key=value, got '{bad}'" in capsys.readouterr().err


def test_ref_given_with_dataset_is_the_reference(tiny_dataset: Path, tmp_path: Path) -> None:
    """--dataset gives the class names and the fold; --ref, when given too, the labels scored against."""
    pred = tmp_path / "pred"
    _predictions_of_every_case(tiny_dataset, pred)
    empty_refs = tmp_path / "refs"
    empty_refs.mkdir()
    for label in pred.glob("*.nii.gz"):
        shutil.copy(label, empty_refs / label.name)
    for path in empty_refs.glob("*.nii.gz"):
        array, geometry = read_image(path)
        write_image(np.zeros_like(array), path, geometry)
    out = tmp_path / "rows.csv"
    assert main(["evaluate", "--pred", str(pred), "--dataset", str(tiny_dataset), "--ref", str(empty_refs),
                 "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["empty"]) == {"ref"}


def test_a_missing_prediction_folder_with_a_fold_is_one_line(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--pred", str(tmp_path / "none"), "--dataset", str(tiny_dataset), "--fold", "0",
                 "--out", str(tmp_path / "x.csv")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'none'}: prediction folder not found")
