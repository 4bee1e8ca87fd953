"""Per-case metrics: agreement with medpy 0.5.2, empty-mask policy, folder checks, the CLI."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

import cmfnet
from cmfnet import cli
from cmfnet.errors import InputError
from cmfnet.data.io import write_json
from cmfnet.data.dataset import make_dataset_json
from cmfnet.evaluation.metrics import evaluate_case, image_diagonal_mm
from cmfnet.evaluation.evaluate import evaluate_folders
from conftest import write_case

SPACING = (3.0, 1.27, 1.27)
CLASSES = {1: "tumour", 2: "node", 3: "organ"}
TOL = 1e-4


def smooth_labels(shape: tuple[int, ...], seed: int, n_classes: int = 3,
                  threshold: float = 0.04) -> np.ndarray:
    """Random smooth blobs: argmax of smoothed noise where its maximum exceeds a threshold."""
    fields = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(n_classes, *shape)),
                                     (0, 1.5, 3, 3))
    return np.where(fields.max(0) > threshold, fields.argmax(0) + 1, 0).astype(np.uint8)


def perturbed(labels: np.ndarray, seed: int) -> np.ndarray:
    """A plausible prediction: the reference with some classes grown or shrunk and noise flipped."""
    rng = np.random.default_rng(seed)
    pred = labels.copy()
    grown = ndimage.binary_dilation(labels == 1, iterations=2) & (labels == 0)
    pred[grown] = 1
    pred[ndimage.binary_erosion(labels == 2) ^ (labels == 2)] = 0
    flips = rng.random(labels.shape) < 0.002
    pred[flips] = rng.integers(0, 4, flips.sum())
    return pred


def medpy_values(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    return {"dsc": medpy_binary.dc(pred, ref),
            "asd": medpy_binary.asd(pred, ref, voxelspacing=spacing),
            "assd": medpy_binary.assd(pred, ref, voxelspacing=spacing),
            "hd95": medpy_binary.hd95(pred, ref, voxelspacing=spacing)}


def assert_agrees_with_medpy(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...],
                             classes: dict[int, str]) -> list[dict]:
    rows = evaluate_case(pred, ref, spacing, classes)
    assert [row["class_id"] for row in rows] == sorted(classes)
    for row in rows:
        pred_mask, ref_mask = pred == row["class_id"], ref == row["class_id"]
        assert row["empty"] == "none"
        expected = medpy_values(pred_mask, ref_mask, spacing)
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, abs=TOL), (row["class"], name)
        assert row["tp"] == np.count_nonzero(pred_mask & ref_mask)
        assert row["fp"] == np.count_nonzero(pred_mask & ~ref_mask)
        assert row["fn"] == np.count_nonzero(~pred_mask & ref_mask)
        assert (row["n_pred"], row["n_ref"]) == (pred_mask.sum(), ref_mask.sum())
    return rows


# -- agreement with medpy ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_medpy_on_smooth_blobs_with_anisotropic_spacing(seed: int) -> None:
    ref = smooth_labels((14, 40, 36), seed)
    pred = perturbed(ref, seed + 100)
    assert set(np.unique(ref)) == {0, 1, 2, 3}
    assert_agrees_with_medpy(pred, ref, SPACING, CLASSES)


def test_swapping_spacing_axes_changes_distances() -> None:
    """Guards against the (s[2], s[0], s[1]) spacing bug: the axis order must matter."""
    ref = smooth_labels((14, 40, 36), 3)
    pred = perturbed(ref, 4)
    zyx = evaluate_case(pred, ref, SPACING, CLASSES)
    xyz = evaluate_case(pred, ref, SPACING[::-1], CLASSES)
    assert any(abs(a["assd"] - b["assd"]) > 0.01 for a, b in zip(zyx, xyz))


def test_masks_touching_the_image_border_agree_with_medpy() -> None:
    shape = (8, 20, 24)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[:, :, :10] = 1                   # slab on five faces of the image
    pred[:, :, :12] = 1
    pred[3:5, 5:9, 2:6] = 0              # with a hole: an inner surface too
    ref[:, 15:, 18:] = 2                 # corner block, its crop box ends at the image edge
    pred[:3, 14:, 17:] = 2
    pred[-1, -1, -1] = 3                 # single voxels in opposite corners
    ref[0, 0, -1] = 3
    assert_agrees_with_medpy(pred, ref, SPACING, CLASSES)


def test_whole_image_mask_agrees_with_medpy() -> None:
    """A mask filling the image has its surface on the image boundary (medpy erodes with
    background outside the array)."""
    ref = np.ones((6, 10, 12), np.uint8)
    pred = np.ones_like(ref)
    pred[2:4, 3:7, 3:9] = 0
    assert_agrees_with_medpy(pred, ref, SPACING, {1: "all"})


def test_single_voxel_masks_match_the_hand_computed_distance() -> None:
    shape = (5, 9, 9)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[2, 4, 4] = 1
    pred[3, 6, 4] = 1                    # one slice and two rows away
    (row,) = assert_agrees_with_medpy(pred, ref, SPACING, {1: "dot"})
    distance = math.hypot(1 * SPACING[0], 2 * SPACING[1])
    assert row["dsc"] == 0.0
    for name in ("asd", "assd", "hd95"):
        assert row[name] == pytest.approx(distance, abs=1e-9)


def test_directed_asd_differs_from_assd_and_follows_prediction_to_reference() -> None:
    """A small prediction inside a large reference is close to it, but not the other way round."""
    ref = np.zeros((10, 30, 30), np.uint8)
    ref[1:9, 3:27, 3:27] = 1
    pred = np.zeros_like(ref)
    pred[1:9, 3:8, 3:8] = 1
    (row,) = assert_agrees_with_medpy(pred, ref, SPACING, {1: "organ"})
    (reverse,) = evaluate_case(ref, pred, SPACING, {1: "organ"})
    assert row["asd"] < reverse["asd"]
    assert row["assd"] == pytest.approx(reverse["assd"], abs=1e-9)


# -- empty-mask policy ---------------------------------------------------------------------------
def test_empty_mask_policy_is_applied_and_recorded() -> None:
    shape = (10, 20, 30)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[2:5, 3:8, 4:9] = 1               # class 1: missed by the prediction
    pred[6:8, 10:12, 20:25] = 2          # class 2: hallucinated
    rows = {row["class_id"]: row for row in evaluate_case(pred, ref, SPACING, CLASSES)}
    diagonal = math.sqrt((10 * 3.0) ** 2 + (20 * 1.27) ** 2 + (30 * 1.27) ** 2)
    assert image_diagonal_mm(shape, SPACING) == pytest.approx(diagonal)

    assert rows[1]["empty"] == "pred" and rows[2]["empty"] == "ref" and rows[3]["empty"] == "both"
    for k in (1, 2):
        assert rows[k]["dsc"] == 0.0 == medpy_binary.dc(pred == k, ref == k)
        assert rows[k]["asd"] == rows[k]["assd"] == rows[k]["hd95"] == pytest.approx(diagonal)
    assert (rows[1]["fn"], rows[1]["n_ref"], rows[2]["fp"], rows[2]["n_pred"]) == (75, 75, 20, 20)
    # medpy 0.5.2 means to return 1 here, but under NumPy 2 its numpy-int division gives NaN
    assert rows[3]["dsc"] == 1.0
    assert rows[3]["asd"] == rows[3]["assd"] == rows[3]["hd95"] == 0.0
    assert [rows[3][c] for c in ("tp", "fp", "fn", "n_pred", "n_ref", "nsd")] == [0, 0, 0, 0, 0, 1.0]
    assert all(row["penalty_mm"] == pytest.approx(diagonal) for row in rows.values())


def test_mismatched_shapes_or_spacing_are_refused_with_what_differs() -> None:
    with pytest.raises(ValueError, match=r"prediction shape \(2, 3, 4\) != reference shape \(2, 3, 5\)"):
        evaluate_case(np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 5), np.uint8), SPACING, CLASSES)
    with pytest.raises(ValueError, match=r"spacing \(1.0, 1.0\) does not match 3-d arrays"):
        evaluate_case(np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 4), np.uint8), (1.0, 1.0), CLASSES)


# -- folders -------------------------------------------------------------------------------------
@pytest.fixture
def case_folders(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    arrays = {}
    for i, case in enumerate(["case_b", "case_a"]):
        ref = smooth_labels((10, 28, 24), 10 + i)
        pred = perturbed(ref, 20 + i)
        write_case(tmp_path / "ref", case, ref, SPACING)
        write_case(tmp_path / "pred", case, pred, SPACING)
        arrays[case] = (pred, ref)
    return tmp_path / "pred", tmp_path / "ref", arrays


def test_evaluate_folders_gives_one_row_per_case_and_class(case_folders) -> None:
    pred_dir, ref_dir, arrays = case_folders
    table = evaluate_folders(pred_dir, ref_dir, {0: "background", **CLASSES})
    assert list(table["case"]) == ["case_a"] * 3 + ["case_b"] * 3
    assert list(table["class"]) == list(CLASSES.values()) * 2
    for case, (pred, ref) in arrays.items():
        expected = pd.DataFrame(evaluate_case(pred, ref, SPACING, CLASSES))
        got = table[table["case"] == case].drop(columns="case").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_process_pool_gives_the_same_table(case_folders) -> None:
    pred_dir, ref_dir, _ = case_folders
    serial = evaluate_folders(pred_dir, ref_dir, CLASSES)
    parallel = evaluate_folders(pred_dir, ref_dir, CLASSES, jobs=2)
    pd.testing.assert_frame_equal(serial, parallel)


def test_inferred_classes_come_from_the_references(tmp_path: Path) -> None:
    ref = np.zeros((6, 12, 12), np.uint8)
    ref[1:3, 2:5, 2:5] = 1
    ref[4:5, 7:10, 7:10] = 2
    write_case(tmp_path / "ref", "with_both", ref, SPACING)
    write_case(tmp_path / "pred", "with_both", ref, SPACING)
    only_one = np.where(ref == 1, 1, 0).astype(np.uint8)
    write_case(tmp_path / "ref", "with_one", only_one, SPACING)
    write_case(tmp_path / "pred", "with_one", only_one, SPACING)
    table = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert list(zip(table["case"], table["class_id"], table["empty"])) == [
        ("with_both", 1, "none"), ("with_both", 2, "none"),
        ("with_one", 1, "none"), ("with_one", 2, "both")]
    assert (table["dsc"] == 1.0).all()

    hallucinated = only_one.copy()
    hallucinated[0, 0, 0] = 5
    bad = write_case(tmp_path / "pred", "with_one", hallucinated, SPACING)
    with pytest.raises(InputError, match="5") as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert err.value.path == str(bad)


def test_missing_reference_is_an_input_error(case_folders) -> None:
    pred_dir, ref_dir, _ = case_folders
    (ref_dir / "case_a.nii.gz").unlink()
    with pytest.raises(InputError, match="reference file not found") as err:
        evaluate_folders(pred_dir, ref_dir, CLASSES)
    assert err.value.path == str(ref_dir / "case_a.nii.gz")


@pytest.mark.parametrize("pred_shape, pred_spacing", [((10, 28, 24), (3.0, 1.0, 1.27)),
                                                      ((10, 28, 25), SPACING)])
def test_mismatched_grid_is_an_input_error(tmp_path: Path, pred_shape, pred_spacing) -> None:
    write_case(tmp_path / "ref", "c", np.ones((10, 28, 24), np.uint8), SPACING)
    bad = write_case(tmp_path / "pred", "c", np.ones(pred_shape, np.uint8), pred_spacing)
    with pytest.raises(InputError, match="grid") as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", CLASSES)
    assert err.value.path == str(bad)


@pytest.mark.parametrize("side", ["pred", "ref"])
def test_label_outside_declared_classes_is_an_input_error(tmp_path: Path, side: str) -> None:
    labels = np.ones((4, 8, 8), np.uint8)
    wrong = labels.copy()
    wrong[0, 0, 0] = 4
    write_case(tmp_path / "ref", "c", wrong if side == "ref" else labels, SPACING)
    write_case(tmp_path / "pred", "c", wrong if side == "pred" else labels, SPACING)
    with pytest.raises(InputError, match=r"\[4\] outside the declared classes") as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", CLASSES)
    assert err.value.path == str(tmp_path / side / "c.nii.gz")


def test_empty_prediction_folder_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    write_case(tmp_path / "ref", "c", np.ones((4, 8, 8), np.uint8), SPACING)
    with pytest.raises(InputError, match="no \\*.nii.gz predictions") as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", CLASSES)
    assert err.value.path == str(tmp_path / "pred")


# -- CLI -----------------------------------------------------------------------------------------
@pytest.fixture
def evaluate_cli():
    return cli.main


def make_dataset(root: Path, cases: dict[str, np.ndarray]) -> None:
    for case, labels in cases.items():
        write_case(root / "labelsTr", case, labels, SPACING)
    labels = {"background": 0, **{name: k for k, name in CLASSES.items()}}
    write_json(make_dataset_json("toy", ["CT", "MR"], labels, list(cases), SPACING, splits=[]),
               root / "dataset.json")


def test_rows_and_versions_do_not_need_medpy(tmp_path: Path, evaluate_cli, monkeypatch) -> None:
    """medpy is GPL and only a test dependency: with it unimportable a model's versions and a
    metrics row are still written, and no row names a medpy version."""
    from cmfnet.training.model import versions

    monkeypatch.setitem(sys.modules, "medpy", None)  # `import medpy` now raises ImportError
    assert "medpy" not in versions() and versions()["cmfnet"] == cmfnet.__version__
    make_dataset(tmp_path / "data", {"p1": smooth_labels((8, 24, 24), 5)})
    write_case(tmp_path / "pred", "p1", smooth_labels((8, 24, 24), 5), SPACING)
    out = tmp_path / "metrics.csv"
    assert evaluate_cli(["evaluate", "--pred", str(tmp_path / "pred"), "--dataset", str(tmp_path / "data"),
                         "--out", str(out), "--jobs", "1"]) == 0
    assert not [column for column in pd.read_csv(out).columns if "medpy" in column]


def test_cli_writes_the_csv_with_tags_and_versions(tmp_path: Path, evaluate_cli, capsys) -> None:
    refs = {"p1": smooth_labels((8, 24, 24), 5), "p2": smooth_labels((8, 24, 24), 6)}
    make_dataset(tmp_path / "data", refs)
    for case, ref in refs.items():
        write_case(tmp_path / "pred", case, perturbed(ref, 7), SPACING)
    out = tmp_path / "results" / "metrics.csv"
    code = evaluate_cli(["evaluate", "--pred", str(tmp_path / "pred"), "--dataset",
                         str(tmp_path / "data"), "--out", str(out),
                         "--tag", "method=pce", "--tag", "fold=0", "--jobs", "1"])
    assert code == 0
    table = pd.read_csv(out)
    required = ["method", "fold", "case", "class", "class_id", "dsc", "asd", "assd", "hd95", "tp",
                "fp", "fn", "n_pred", "n_ref", "empty", "penalty_mm", "cmfnet_version"]
    assert set(required) <= set(table.columns)
    assert len(table) == 2 * len(CLASSES)
    assert (table["method"] == "pce").all() and (table["fold"] == 0).all()
    assert (table["cmfnet_version"] == cmfnet.__version__).all() and "medpy_version" not in table
    assert set(table["class"]) == set(CLASSES.values())
    summary = capsys.readouterr().out.strip()
    assert summary.count("\n") == 0 and "2 cases" in summary and "tumour" in summary


def test_cli_mismatched_grid_exits_2_and_writes_nothing(tmp_path: Path, evaluate_cli,
                                                         capsys) -> None:
    write_case(tmp_path / "ref", "c", np.ones((4, 8, 8), np.uint8), SPACING)
    write_case(tmp_path / "pred", "c", np.ones((4, 8, 8), np.uint8), (1.0, 1.0, 1.0))
    out = tmp_path / "metrics.csv"
    code = evaluate_cli(["evaluate", "--pred", str(tmp_path / "pred"), "--ref",
                         str(tmp_path / "ref"), "--out", str(out)])
    assert code == 2
    assert "pred/c.nii.gz" in capsys.readouterr().err
    assert list(tmp_path.glob("*metrics.csv*")) == []


def test_cli_needs_a_reference_folder_or_a_dataset(tmp_path: Path, evaluate_cli, capsys) -> None:
    write_case(tmp_path / "pred", "c", np.ones((4, 8, 8), np.uint8), SPACING)
    code = evaluate_cli(["evaluate", "--pred", str(tmp_path / "pred"),
                         "--out", str(tmp_path / "m.csv")])
    assert code == 2
    assert "--dataset" in capsys.readouterr().err


# -- normalised surface Dice -----------------------------------------------------------------------
@pytest.mark.parametrize("tolerance", [0.0, 1.3, 3.0])
def test_nsd_is_the_share_of_surface_voxels_within_the_tolerance_by_brute_force(tolerance: float) -> None:
    """Every pair of surface voxels measured in mm (no distance transform), anisotropic spacing."""
    rng = np.random.default_rng(7)
    ref = ndimage.binary_dilation(rng.random((6, 12, 10)) > 0.93, iterations=1)
    pred = ndimage.binary_dilation(rng.random((6, 12, 10)) > 0.93, iterations=1)
    spacing = (2.0, 0.7, 1.1)
    footprint = ndimage.generate_binary_structure(3, 1)
    surfaces = [np.argwhere(m ^ ndimage.binary_erosion(m, structure=footprint)) * np.array(spacing)
                for m in (pred, ref)]
    distances = np.sqrt(((surfaces[0][:, None, :] - surfaces[1][None, :, :]) ** 2).sum(-1))
    within = np.count_nonzero(distances.min(1) <= tolerance) + np.count_nonzero(distances.min(0) <= tolerance)
    (row,) = evaluate_case(pred.astype(np.uint8), ref.astype(np.uint8), spacing, {1: "a"}, nsd_tolerance_mm=tolerance)
    assert row["nsd"] == pytest.approx(within / (distances.shape[0] + distances.shape[1]))
    assert row["nsd_tolerance_mm"] == tolerance
    assert 0 < row["nsd"] <= 1 if tolerance else row["nsd"] < 1


def test_nsd_of_empty_masks_is_one_when_both_are_empty_and_zero_when_one_is() -> None:
    empty, blob = np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8, 8), np.uint8)
    blob[1:3, 2:6, 2:6] = 1
    assert evaluate_case(empty, empty, SPACING, {1: "a"})[0]["nsd"] == 1.0
    assert evaluate_case(empty, blob, SPACING, {1: "a"})[0]["nsd"] == 0.0
    assert evaluate_case(blob, empty, SPACING, {1: "a"})[0]["nsd"] == 0.0
    assert evaluate_case(blob, blob, SPACING, {1: "a"})[0]["nsd"] == 1.0
