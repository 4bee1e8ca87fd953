"""dataset.json has one schema (cmfnet/data/dataset.schema.json), checked in cmfnet.data.io for every reader:
a wrong type is one line naming the file and the field, in `validate` (exit 2, its problem list)
and in `train` and `scribble` (exit 2), before anything is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cmfnet import cli
from cmfnet.data.io import read_json
from cmfnet.data.dataset import Dataset, dataset_json_problems
from cmfnet.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda meta: meta.__setitem__(key, value)


def _fold(change: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda meta: change(meta["splits"][0])


# (what is wrong, the field the message must name)
BAD = {
    "cases-dict": (_set("cases", {"case_000": 1}), "'cases'"),
    "cases-int": (_set("cases", 8), "'cases'"),
    "cases-empty": (_set("cases", []), "'cases'"),
    "case-id-int": (lambda m: m["cases"].__setitem__(1, 7), "'cases[1]'"),
    "case-id-space": (lambda m: m["cases"].__setitem__(1, "case 1"), "'cases[1]'"),
    "case-duplicate": (lambda m: m["cases"].__setitem__(1, m["cases"][0]), "'cases'"),
    "splits-null": (_set("splits", None), "'splits'"),
    "splits-dict": (_set("splits", {"train": ["case_000"]}), "'splits'"),
    "fold-string": (lambda m: m["splits"].__setitem__(0, "case_000"), "'splits[0]'"),
    "fold-train-string": (_fold(lambda f: f.__setitem__("train", "case_000")), "'splits[0].train'"),
    "fold-train-int-item": (_fold(lambda f: f["train"].__setitem__(0, 3)), "'splits[0].train[0]'"),
    "fold-no-train": (_fold(lambda f: f.pop("train")), "'splits[0]'"),
    "fold-typo-key": (_fold(lambda f: f.__setitem__("tset", f.pop("test"))), "'splits[0]'"),
    "fold-flag-string": (_fold(lambda f: f.__setitem__("val_from_train", "yes")), "'splits[0].val_from_train'"),
    "labels-string": (_set("labels", "background=0,tumour=1"), "'labels'"),
    "labels-list": (_set("labels", ["background", "tumour"]), "'labels'"),
    "label-id-string": (_set("labels", {"background": 0, "tumour": "1"}), "'labels.tumour'"),
    "label-id-negative": (_set("labels", {"background": 0, "tumour": -1}), "'labels.tumour'"),
    "labels-gap": (_set("labels", {"background": 0, "tumour": 2}), "'labels'"),
    "labels-no-background": (_set("labels", {"air": 0, "tumour": 1}), "'labels'"),
    "channel-names-list": (_set("channel_names", ["CT", "MR"]), "'channel_names'"),
    "channel-names-key": (_set("channel_names", {"0": "CT", "one": "MR"}), "'channel_names'"),
    "channel-names-gap": (_set("channel_names", {"0": "CT", "2": "MR"}), "'channel_names'"),
    "channel-name-int": (_set("channel_names", {"0": "CT", "1": 5}), "'channel_names.1'"),
    "spacing-two": (_set("spacing", [3.0, 1.25]), "'spacing'"),
    "spacing-negative": (_set("spacing", [3.0, -1.25, 1.25]), "'spacing[1]'"),
    "spacing-zero": (_set("spacing", [3.0, 0, 1.25]), "'spacing[1]'"),
    "spacing-string": (_set("spacing", "3x1.25x1.25"), "'spacing'"),
    "num-training-string": (_set("numTraining", "8"), "'numTraining'"),
    "num-training-wrong": (_set("numTraining", 9), "'numTraining'"),
    "normalization-list": (_set("normalization", ["ct"]), "'normalization'"),
    "normalization-scheme": (lambda m: m["normalization"]["CT"].__setitem__("scheme", "hu"), "'normalization.CT.scheme'"),
    "normalization-window": (lambda m: m["normalization"]["CT"].__setitem__("window", [-160]), "'normalization.CT.window'"),
    "normalization-channel": (lambda m: m["normalization"].__setitem__("PET", {"scheme": "ct"}), "'normalization.PET'"),
    "file-ending": (_set("file_ending", ".nii"), "'file_ending'"),
    "missing-cases": (lambda m: m.pop("cases"), "'cases'"),
    "not-an-object": (None, "dataset.json must be a JSON object"),
}


def break_meta(root: Path, name: str) -> Path:
    path = root / "dataset.json"
    change = BAD[name][0]
    if change is None:
        path.write_text("[1, 2, 3]")
        return path
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
    return path


def test_sound_dataset_json_has_no_problem(tiny_dataset):
    assert dataset_json_problems(read_json(tiny_dataset / "dataset.json")) == []
    Dataset(tiny_dataset)


@pytest.mark.parametrize("name", sorted(BAD))
def test_validate_names_the_file_and_the_field(tiny_dataset, capsys, name):
    path = break_meta(tiny_dataset, name)
    assert cli.main(["validate", str(tiny_dataset)]) == 2
    lines = capsys.readouterr().out.splitlines()
    problems = [line for line in lines if not line.startswith("cmfnet validate:")]
    assert problems and all(line.startswith(f"{path}: ") for line in problems), lines
    assert BAD[name][1] in problems[0], problems


@pytest.mark.parametrize("name", ["cases-dict", "cases-int", "splits-null", "labels-string",
                                  "channel-names-list", "fold-train-int-item", "spacing-negative"])
def test_train_refuses_in_one_line_before_writing(tiny_dataset, tmp_path, capsys, name):
    """`cases` as a dict used to train; the others tracebacked."""
    path = break_meta(tiny_dataset, name)
    out = tmp_path / "run"
    argv = ["train", "--card", str(REPO / "methods" / "pce.yaml"), "--dataset", str(tiny_dataset),
            "--fold", "0", "--out", str(out), "--set", "train.iterations=1", "--device", "cpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cmfnet train: error: {path}: "), err
    assert BAD[name][1] in err[0]
    assert not (out / "model.pt").exists()


def test_scribble_refuses_through_the_same_schema(tiny_dataset, capsys):
    path = break_meta(tiny_dataset, "splits-null")
    assert cli.main(["scribble", "--dataset", str(tiny_dataset), "--variant", "sim"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cmfnet scribble: error: {path}: 'splits'"), err


def test_dataset_reports_the_first_problem_and_counts_the_rest(tiny_dataset):
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    meta.update(cases=3, labels="x")
    (tiny_dataset / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"'cases' .* \(and 1 more problem: cmfnet validate lists them\)"):
        Dataset(tiny_dataset)


def test_schema_ships_inside_the_package():
    """A wheel must carry the schema file: pyproject.toml names it as package data."""
    assert "dataset.schema.json" in (REPO / "pyproject.toml").read_text()
    assert (REPO / "cmfnet" / "data" / "dataset.schema.json").is_file()
