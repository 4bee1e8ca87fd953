"""What `cmfnet evaluate` accepts as a label map, and the rows it writes for classes a case lacks.

Written for the mutation run of 2026-12-04 (docs/testing.md): label maps stored as floats, with
negative values or as booleans, a grid within the tolerance, a false positive of a class the case's
reference lacks, and the files a prediction folder may hold besides predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmfnet.data.io import GRID_TOLERANCE
from cmfnet.errors import InputError
from cmfnet.evaluation.evaluate import _label_values, evaluate_folders
from cmfnet.evaluation.metrics import METRIC_COLUMNS, image_diagonal_mm
from conftest import write_case

SPACING = (3.0, 1.5, 1.5)


def two_blobs() -> np.ndarray:
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[1:3, 1:4, 1:4] = 1
    labels[1:3, 6:9, 6:9] = 2
    return labels


def test_whole_floats_are_read_as_labels_and_booleans_as_zero_one(tmp_path: Path) -> None:
    ref = two_blobs()
    write_case(tmp_path / "ref", "c", ref, SPACING)
    write_case(tmp_path / "pred", "c", ref.astype(np.float32), SPACING)
    table = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert list(table["class_id"]) == [1, 2] and (table["dsc"] == 1.0).all()

    array, values = _label_values(np.array([[True, False]]), tmp_path / "b.nii.gz")
    assert array.dtype == np.uint8 and array.tolist() == [[1, 0]] and values == {0, 1}
    array, values = _label_values(np.array([2.0, 0.0, 2.0]), tmp_path / "f.nii.gz")
    assert np.issubdtype(array.dtype, np.integer) and array.tolist() == [2, 0, 2] and values == {0, 2}
    array, values = _label_values(np.zeros((0, 3), np.uint8), tmp_path / "e.nii.gz")
    assert values == set() and array.shape == (0, 3)


def test_a_label_map_with_non_integer_values_is_refused_naming_the_file(tmp_path: Path) -> None:
    ref = two_blobs()
    write_case(tmp_path / "ref", "c", ref, SPACING)
    pred = ref.astype(np.float32)
    pred[0, 0, 0] = 0.5
    bad = write_case(tmp_path / "pred", "c", pred, SPACING)
    with pytest.raises(InputError) as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert (err.value.path, err.value.problem) == (str(bad), "label map has non-integer values")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_values_are_not_labels(tmp_path: Path, bad_value: float) -> None:
    """read_image refuses them in files first; the check still holds for arrays."""
    with pytest.raises(InputError) as err:
        _label_values(np.array([1.0, bad_value]), tmp_path / "x.nii.gz")
    assert (err.value.path, err.value.problem) == (str(tmp_path / "x.nii.gz"), "label map has non-integer values")


def test_a_label_map_with_negative_values_is_refused_with_its_minimum(tmp_path: Path) -> None:
    ref = two_blobs().astype(np.int16)
    write_case(tmp_path / "pred", "c", ref, SPACING)
    ref[0, 0, 0] = -3
    bad = write_case(tmp_path / "ref", "c", ref, SPACING)
    with pytest.raises(InputError) as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert (err.value.path, err.value.problem) == (str(bad), "label map has negative values (min -3)")


def test_spacing_within_the_grid_tolerance_is_the_same_grid_and_beyond_it_is_refused(tmp_path: Path) -> None:
    ref = two_blobs()
    ref_path = write_case(tmp_path / "ref", "c", ref, SPACING)
    near = (SPACING[0] + GRID_TOLERANCE / 2, *SPACING[1:])
    write_case(tmp_path / "pred", "c", ref, near)
    assert (evaluate_folders(tmp_path / "pred", tmp_path / "ref")["dsc"] == 1.0).all()

    far = (SPACING[0] + 0.25, *SPACING[1:])
    bad = write_case(tmp_path / "pred", "c", ref, far)
    with pytest.raises(InputError) as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert err.value.path == str(bad)
    assert err.value.problem.startswith("grid (4, 10, 10) @ (3.25, 1.5, 1.5) mm")
    assert f"differs from reference {ref_path} ((4, 10, 10) @ (3.0, 1.5, 1.5) mm)" in err.value.problem


def test_a_false_positive_of_a_class_this_reference_lacks_is_scored_not_called_both_empty(tmp_path: Path) -> None:
    """Classes inferred from the references: case b's reference has no class 2, its prediction
    does; that row must count the false positives, not be filled in as a perfect both-empty row."""
    both = two_blobs()
    write_case(tmp_path / "ref", "a", both, SPACING)
    write_case(tmp_path / "pred", "a", both, SPACING)
    only_one = np.where(both == 1, 1, 0).astype(np.uint8)
    write_case(tmp_path / "ref", "b", only_one, SPACING)
    write_case(tmp_path / "pred", "b", both, SPACING)
    table = evaluate_folders(tmp_path / "pred", tmp_path / "ref").set_index(["case", "class_id"])
    row = table.loc[("b", 2)]
    assert (row["empty"], row["fp"], row["n_pred"], row["n_ref"], row["dsc"]) == ("ref", 18, 18, 0, 0.0)

    write_case(tmp_path / "pred", "b", only_one, SPACING)
    table = evaluate_folders(tmp_path / "pred", tmp_path / "ref").set_index(["case", "class_id"])
    assert list(table.reset_index().columns) == ["case", *METRIC_COLUMNS]
    assert list(table["class"]) == ["label_1", "label_2", "label_1", "label_2"]
    # the row a case gets for a class it lacks on both sides is the policy's both-empty row, NSD included
    # (it was NaN, and the NSD tolerance missing, before 2026-12-04)
    filled = table.loc[("b", 2)].to_dict()
    assert filled == {"class": "label_2", "dsc": 1.0, "asd": 0.0, "assd": 0.0, "hd95": 0.0, "nsd": 1.0,
                      "tp": 0, "fp": 0, "fn": 0, "n_pred": 0, "n_ref": 0, "empty": "both",
                      "penalty_mm": pytest.approx(image_diagonal_mm(both.shape, SPACING)),
                      "nsd_tolerance_mm": table.loc[("a", 1), "nsd_tolerance_mm"]}


def test_a_predicted_label_no_reference_holds_is_named_with_the_references_labels(tmp_path: Path) -> None:
    ref = two_blobs()
    write_case(tmp_path / "ref", "c", ref, SPACING)
    pred = ref.copy()
    pred[0, 0, :7] = [3, 4, 5, 6, 7, 8, 9]
    bad = write_case(tmp_path / "pred", "c", pred, SPACING)
    with pytest.raises(InputError) as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert (err.value.path, err.value.problem) == (
        str(bad), "label values [3, 4, 5, 6, 7] outside the labels of the references [1, 2]")


def test_only_visible_nifti_files_of_the_prediction_folder_are_cases(tmp_path: Path) -> None:
    labels = two_blobs()
    write_case(tmp_path / "ref", "c", labels, SPACING)
    write_case(tmp_path / "pred", "c", labels, SPACING)
    write_case(tmp_path / "pred", ".partial", labels, SPACING)  # what an interrupted writer may leave
    (tmp_path / "pred" / "notes.txt").write_text("not a prediction")
    assert sorted(set(evaluate_folders(tmp_path / "pred", tmp_path / "ref")["case"])) == ["c"]


@pytest.mark.parametrize("missing, problem", [("pred", "prediction folder not found"),
                                              ("ref", "reference folder not found")])
def test_a_missing_folder_is_named_with_its_role(tmp_path: Path, missing: str, problem: str) -> None:
    for folder in {"pred", "ref"} - {missing}:
        write_case(tmp_path / folder, "c", two_blobs(), SPACING)
    with pytest.raises(InputError) as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert (err.value.path, err.value.problem) == (str(tmp_path / missing), problem)


def test_jobs_below_one_are_refused(tmp_path: Path) -> None:
    for folder in ("pred", "ref"):
        write_case(tmp_path / folder, "c", two_blobs(), SPACING)
    with pytest.raises(InputError) as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", jobs=0)
    assert (err.value.path, err.value.problem) == (str(tmp_path / "pred"), "jobs must be >= 1, got 0")
