"""`cmfnet validate`: a sound dataset passes; each kind of problem is one line naming the file, exit 1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cmfnet import cli
from cmfnet.data.validate import split_problems


@pytest.fixture
def run():
    """The ``cmfnet`` command line, in process."""
    return lambda *argv: cli.main([str(a) for a in argv])


def write(path: Path, array: np.ndarray, spacing=(2.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing[::-1])
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


SHAPE = (6, 12, 12)


def label_array() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2:4, 4:8, 4:8] = 1
    return label


def scribble_array() -> np.ndarray:
    scribble = np.full(SHAPE, 255, np.uint8)
    scribble[3, 6, 5:7], scribble[3, 1, 1:4] = 1, 0
    return scribble


def make_dataset(root: Path, splits: list[dict], cases=("a", "b", "c"), scribbled=("a", "b", "c")) -> Path:
    """A small dataset folder written directly (2 channels, 1 class, given scribbles)."""
    rng = np.random.default_rng(0)
    for case in cases:
        for c in range(2):
            write(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        write(root / "labelsTr" / f"{case}.nii.gz", label_array())
    for case in scribbled:
        write(root / "scribblesTr" / "given" / f"{case}.nii.gz", scribble_array())
    (root / "dataset.json").write_text(json.dumps({
        "name": "t", "channel_names": {"0": "CT", "1": "MR"}, "labels": {"background": 0, "tumour": 1},
        "numTraining": len(cases), "cases": list(cases), "splits": splits,
        "normalization": {"CT": {"scheme": "ct", "window": [-160, 240]}, "MR": {"scheme": "zscore"}}}))
    return root


KFOLD = [{"train": ["b"], "val": ["c"], "test": ["a"]}, {"train": ["c"], "val": ["a"], "test": ["b"]},
         {"train": ["a"], "val": ["b"], "test": ["c"]}]
FIXED = [{"train": ["a"], "val": ["b"], "test": ["c"]}]


def edit_meta(root: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


def problems(run, capsys, root: Path) -> list[str]:
    assert run("validate", root) == 2
    return [line for line in capsys.readouterr().out.splitlines() if not line.startswith("cmfnet validate:")]


def test_sound_dataset_passes_with_summary(run, tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", KFOLD)
    (root / "scribblesTr" / "given" / "coverage.json").write_text("{}")  # what `cmfnet scribble` adds
    assert run("validate", root) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and "3 cases" in out[0] and "3-fold" in out[0] and "given (3)" in out[0]
    # per-class coverage of the given scribbles: 3 background and 2 tumour voxels of 6 x 12 x 12
    assert out[1].strip() == (f"scribble coverage, given, mean of 3 cases: background {300 / 864:.3f} %, "
                              f"tumour {200 / 864:.3f} %")


def test_imported_datasets_pass(run, tmp_path, capsys):
    """What the importers write is what validate accepts, including a 2-case --val-from-train split."""
    source = tmp_path / "src"
    for case in ("a", "b"):
        paths = [write(source / case / f"{m}.nii.gz", np.ones(SHAPE, np.float32)) for m in ("ct", "mr")]
        label = write(source / case / "label.nii.gz", label_array())
        extra = ["--channel-names", "CT,MR", "--labels", "background=0,tumour=1", "--val-from-train"]
        assert run("import", "paired", "--out", tmp_path / "ds", "--case", case, "--image", paths[0],
                   "--image", paths[1], "--label", label, *(extra if case == "a" else [])) == 0
    capsys.readouterr()
    assert run("validate", tmp_path / "ds") == 0


def corrupt_grid(root: Path) -> Path:
    return write(root / "imagesTr" / "b_0001.nii.gz", np.zeros(SHAPE, np.float32), spacing=(2.0, 1.3, 1.3))


def corrupt_label_value(root: Path) -> Path:
    label = label_array()
    label[0, 0, 0] = 3
    return write(root / "labelsTr" / "a.nii.gz", label)


def corrupt_scribble_value(root: Path) -> Path:
    scribble = scribble_array()
    scribble[0, 0, 0] = 7
    return write(root / "scribblesTr" / "given" / "b.nii.gz", scribble)


def corrupt_nan(root: Path) -> Path:
    image = np.zeros(SHAPE, np.float32)
    image[1, 2, 3] = np.nan
    return write(root / "imagesTr" / "c_0000.nii.gz", image)


def corrupt_missing_modality(root: Path) -> Path:
    path = root / "imagesTr" / "a_0001.nii.gz"
    path.unlink()
    return path


def corrupt_truncated(root: Path) -> Path:
    path = root / "imagesTr" / "b_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:-200])
    return path


def corrupt_empty_scribble(root: Path) -> Path:
    return write(root / "scribblesTr" / "given" / "c.nii.gz", np.full(SHAPE, 255, np.uint8))


def corrupt_stray_file(root: Path) -> Path:
    path = root / "imagesTr" / ".a_0000.nii.gz.tmp123.part.nii.gz"
    path.write_bytes(b"")
    return path


def corrupt_case_tested_twice(root: Path) -> Path:
    edit_meta(root, lambda m: m["splits"][1].update(test=["a"], train=["b", "c"], val=["b"]))
    return root / "dataset.json"


def corrupt_train_test_overlap(root: Path) -> Path:
    edit_meta(root, lambda m: m["splits"][0].update(train=["a", "b"]))
    return root / "dataset.json"


def corrupt_val_from_train_loosely(root: Path) -> Path:
    """The flag is only for a fold whose single non-test case is train and val, not a shortcut."""
    edit_meta(root, lambda m: m["splits"][0].update(train=["b", "c"], val=["b"], val_from_train=True))
    return root / "dataset.json"


def corrupt_missing_scribble(root: Path) -> Path:
    (root / "scribblesTr" / "given" / "a.nii.gz").unlink()
    return root / "scribblesTr" / "given"


def corrupt_bad_labels_declaration(root: Path) -> Path:
    edit_meta(root, lambda m: m.update(labels={"background": 0, "tumour": 2}))
    return root / "dataset.json"


@pytest.mark.parametrize("corrupt", [
    corrupt_grid, corrupt_label_value, corrupt_scribble_value, corrupt_nan, corrupt_missing_modality,
    corrupt_truncated, corrupt_empty_scribble, corrupt_stray_file, corrupt_case_tested_twice,
    corrupt_train_test_overlap, corrupt_val_from_train_loosely, corrupt_missing_scribble,
    corrupt_bad_labels_declaration])
def test_each_problem_is_one_line_naming_the_file(run, tmp_path, capsys, corrupt):
    root = make_dataset(tmp_path / "ds", KFOLD)
    culprit = corrupt(root)
    lines = problems(run, capsys, root)
    assert lines and all(line.startswith(f"{root}") for line in lines)
    assert any(line.startswith(f"{culprit}: ") for line in lines), lines


def test_fixed_split_test_case_must_have_no_scribble(run, tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", FIXED, scribbled=("a", "c"))
    lines = problems(run, capsys, root)
    assert lines == [f"{root / 'scribblesTr' / 'given' / 'c.nii.gz'}: scribble of case c, which is in no fold's "
                     "training list (a test or validation case must have no scribble)"]


def test_fixed_split_must_cover_every_case(run, tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", [{"train": ["a"], "val": [], "test": ["c"]}], scribbled=("a",))
    assert problems(run, capsys, root) == [f"{root / 'dataset.json'}: cases in no split: ['b']"]


def test_missing_dataset_json_is_a_problem(run, tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", KFOLD)
    (root / "dataset.json").unlink()
    assert problems(run, capsys, root) == [f"{root / 'dataset.json'}: file not found"]


def test_val_from_train_exactly_as_imported():
    cases = ["a", "b"]
    produced = [{"train": ["a"], "val": ["a"], "test": ["b"], "val_from_train": True},
                {"train": ["b"], "val": ["b"], "test": ["a"], "val_from_train": True}]
    assert split_problems(cases, produced) == []
    unflagged = [{k: v for k, v in fold.items() if k != "val_from_train"} for fold in produced]
    assert any("both train and val" in p for p in split_problems(cases, unflagged))
    grouped = {"p1_f1": "p1", "p1_f2": "p1", "p2_f1": "p2"}
    by_patient = [{"train": ["p1_f1", "p1_f2"], "val": ["p1_f1", "p1_f2"], "test": ["p2_f1"], "val_from_train": True},
                  {"train": ["p2_f1"], "val": ["p2_f1"], "test": ["p1_f1", "p1_f2"], "val_from_train": True}]
    assert split_problems(list(grouped), by_patient, grouped) == []
    assert split_problems(list(grouped), by_patient) != []  # two cases are not one patient without groups
    leaky = [{"train": ["p1_f2"], "val": ["p2_f1"], "test": ["p1_f1"]}]
    assert any("share a patient" in p for p in split_problems(list(grouped), leaky, grouped))


# -- leftovers of killed writes ---------------------------------------------------------------------
def partial_name(target: str) -> str:
    """The name atomic_path/atomic_dir give a write of ``target`` (eight random characters)."""
    return f".{target}.k1ll3d_x.part"


def test_partial_folders_and_files_inside_are_problems_naming_them(run, tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", KFOLD)
    variant = root / "scribblesTr" / partial_name("sim")  # a killed `cmfnet scribble --variant sim`
    variant.mkdir()
    write(variant / "a.nii.gz", scribble_array())
    image = root / "imagesTr" / (partial_name("a_0000.nii.gz") + ".nii.gz")  # a killed write_image
    image.write_bytes(b"\x1f\x8b")
    meta = root / (partial_name("dataset.json") + ".json")
    meta.write_text("{")
    lines = problems(run, capsys, root)
    for path in (variant, image, meta):
        kind = "folder" if path.is_dir() else "file"
        assert f"{path}: partial {kind} left by a killed write (SIGKILL, power loss): not part of the dataset; " \
               "delete it (rerunning the command that wrote it also removes it)" in lines, lines
    assert len(lines) == 3, lines  # the partial variant is not checked as a variant of its own


def test_partial_folders_beside_are_warnings_naming_them(run, tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", KFOLD)
    killed_import = tmp_path / partial_name("ds")
    killed_import.mkdir()
    swap = tmp_path / ".ds.old"
    swap.mkdir()
    unrelated = tmp_path / partial_name("other")
    unrelated.mkdir()
    assert run("validate", root) == 0
    captured = capsys.readouterr()
    warnings = captured.err.splitlines()
    assert len(warnings) == 2, warnings
    assert any(w.startswith(f"warning: {killed_import}: partial folder left by a killed write") for w in warnings)
    assert any(w.startswith(f"warning: {swap}: partial folder") for w in warnings)
    assert str(unrelated) not in captured.err
    assert "valid: 3 cases" in captured.out


def test_directory_in_place_of_an_image_is_called_a_directory(run, tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", KFOLD)
    path = root / "imagesTr" / "b_0001.nii.gz"
    path.unlink()
    path.mkdir()
    lines = problems(run, capsys, root)
    assert any(line.startswith(f"{path}: is a directory, not an image file") for line in lines), lines


def test_one_case_and_one_problem_are_singular(run, tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", [{"train": ["a"], "val": [], "test": []}], cases=("a",), scribbled=("a",))
    assert run("validate", root) == 0
    assert "valid: 1 case, " in capsys.readouterr().out
    (root / "scribblesTr" / "given" / "a.nii.gz").unlink()
    assert problems(run, capsys, root) == [f"{root / 'scribblesTr' / 'given'}: no scribble for training case ['a']"]


def test_dataset_a_killed_import_never_finished_names_the_leftover(run, tmp_path, capsys):
    leftover = tmp_path / partial_name("ds")
    leftover.mkdir()
    assert run("validate", tmp_path / "ds") == 2
    assert capsys.readouterr().err.strip() == (
        f"cmfnet validate: error: {tmp_path / 'ds'}: no such folder (a killed write left {leftover.name} "
        "beside it: rerun the command that makes it)")
