"""`cmfnet predict` refuses bad values and outputs before any work, leaves other files alone,
reports progress in logs, and predicts a new patient at the model's training spacing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cmfnet.evaluation import predict as inference
from cmfnet.training.sliding_window import sliding_window_probabilities
from cmfnet.cli import main
from cmfnet.training.engine import Trainer
from cmfnet.training.model import TrainedModel
from cmfnet.training.config import TrainConfig
from cmfnet.data.io import Geometry, read_image, write_image
from cmfnet.data.dataset import Dataset
from cmfnet.training.cards import load_card
from cmfnet.data.preprocess import resample_to_spacing

from conftest import make_tiny_dataset


def train_tiny(root: Path, dataset: Path, card_extra: str = "", iterations: int = 40) -> Path:
    """A small fully-supervised V-Net, trained long enough that its output depends on the voxel size."""
    card = root / "card.yaml"
    card.write_text("name: Full\nplugin: baselines.pce\nsupervision: mask\n"
                    "network: {arch: vnet, width: 2}\n" + card_extra)
    config = TrainConfig(iterations=iterations, batch_size=1, patch_size=[16, 32, 32], lr=1e-2,
                         val_interval=0, checkpoint_interval=1000, log_interval=1000)
    torch.set_num_threads(1)
    Trainer(load_card(card), Dataset(dataset), 0, root / "model", config, device="cpu").fit()
    return root / "model"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, dataset folder), shared by this module's tests; tests must not modify them."""
    root = tmp_path_factory.mktemp("predict")
    dataset = make_tiny_dataset(root / "tiny")
    return train_tiny(root, dataset), dataset


@pytest.fixture
def patient(trained: tuple[Path, Path]) -> list[Path]:
    """The two channel files of a test case, as a new patient would come."""
    dataset = Dataset(trained[1])
    return dataset.image_paths(dataset.split(0)["test"][0])


def predict(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, list[str]]:
    code = main(["predict", "--device", "cpu", *map(str, args)])
    return code, capsys.readouterr().err.strip().splitlines()


def image_args(paths: list[Path]) -> list[str]:
    return [a for path in paths for a in ("--image", str(path))]


def upsample(path: Path, out: Path) -> Path:
    """A copy of an image at half the spacing on every axis (linear), same origin and orientation."""
    image = sitk.ReadImage(str(path))
    spacing = tuple(s / 2 for s in Geometry.of(image).spacing)
    fine = resample_to_spacing(image, spacing, labelmap=False, default=0.0)
    sitk.WriteImage(fine, str(out))
    return out


# -- item 2: never delete what prediction did not write ---------------------------------------

def test_dataset_prediction_keeps_other_files_and_notes_overwrites(
        trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, dataset = trained
    out = tmp_path / "predictions"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "other_fold_case.nii.gz").write_bytes(b"fold 0's prediction")
    code, _ = predict(capsys, "--model", model, "--dataset", dataset, "--out", out)
    assert code == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "other_fold_case.nii.gz").read_bytes() == b"fold 0's prediction"
    cases = Dataset(dataset).split(0)["test"]
    assert all((out / f"{case}.nii.gz").is_file() for case in cases)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", "other_fold_case.nii.gz", *(f"{case}.nii.gz" for case in cases)])

    code, err = predict(capsys, "--model", model, "--dataset", dataset, "--out", out)
    assert code == 0
    assert [line for line in err if "overwriting" in line] == [
        f"note: overwriting {len(cases)} existing files in {out}: " + ", ".join(f"{c}.nii.gz" for c in cases)]


def test_dataset_prediction_matches_segmenting_each_case(trained: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Dataset mode on the training spacing predicts exactly what the model segments (no resampling)."""
    model, dataset = trained
    case = Dataset(dataset).split(0)["test"][0]
    code, err = predict(capsys, "--model", model, "--dataset", dataset, "--cases", case, "--out", tmp_path / "p")
    assert code == 0 and not any("resampl" in line for line in err)
    image, _ = Dataset(dataset).load_image(case)
    expected = TrainedModel.load(model).segment(image, torch.device("cpu"))
    assert np.array_equal(read_image(tmp_path / "p" / f"{case}.nii.gz")[0], expected)


# -- one line, exit 2, before any work ----------------------------------------------------------

@pytest.mark.parametrize("overlap", ["1.0", "1.5", "-0.1", "nan"])
def test_overlap_outside_0_1_is_refused_before_loading_anything(
        overlap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the model folder does not exist: the overlap must be refused before it is looked at
    code, err = predict(capsys, "--model", tmp_path / "no_model", "--dataset", tmp_path, "--out",
                        tmp_path / "out", "--overlap", overlap)
    assert code == 2 and len(err) == 1 and "--overlap" in err[0] and "below 1" in err[0]
    assert not (tmp_path / "out").exists()


def refusal(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    code, err = predict(capsys, *args)
    assert code == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("name", ["seg", "seg.png", "seg.nii.gz.txt"])
def test_segmentation_name_without_nifti_suffix_is_refused_before_loading_the_model(
        name: str, patient: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refusal(capsys, "--model", tmp_path / "no_model", *image_args(patient), "--out", tmp_path / name)
    assert str(tmp_path / name) in line and ".nii.gz" in line
    assert list(tmp_path.iterdir()) == []


def test_output_that_cannot_be_created_is_refused_before_inference(
        trained: tuple[Path, Path], patient: list[Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    model, dataset = trained
    monkeypatch.setattr(TrainedModel, "segment", lambda *a, **k: pytest.fail("inference started"))
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    line = refusal(capsys, "--model", model, *image_args(patient), "--out", notes / "seg.nii.gz")
    assert line.startswith(f"cmfnet predict: error: {notes}: is a file")
    line = refusal(capsys, "--model", model, "--dataset", dataset, "--out", notes / "preds")
    assert line.startswith(f"cmfnet predict: error: {notes}: is a file")
    line = refusal(capsys, "--model", model, *image_args(patient), "--out", tmp_path)
    assert line.startswith(f"cmfnet predict: error: {tmp_path}: is a folder")
    line = refusal(capsys, "--model", model, *image_args(patient), "--out", patient[1])
    assert "is one of the input images" in line
    assert notes.read_text() == "mine" and sorted(tmp_path.iterdir()) == [notes]


def test_dataset_out_that_is_a_file_is_refused(trained: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    model, dataset = trained
    existing = tmp_path / "predictions.nii.gz"
    existing.write_bytes(b"keep")
    line = refusal(capsys, "--model", model, "--dataset", dataset, "--out", existing)
    assert f"{existing}: is a file" in line and existing.read_bytes() == b"keep"


def test_dataset_out_inside_its_labels_is_refused(trained: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model, dataset = trained
    copy = Path(shutil.copytree(dataset, tmp_path / "copy"))
    before = {p: p.read_bytes() for p in (copy / "labelsTr").iterdir()}
    line = refusal(capsys, "--model", model, "--dataset", copy, "--out", copy / "labelsTr")
    assert "labelsTr" in line and "overwrite" in line
    assert {p: p.read_bytes() for p in (copy / "labelsTr").iterdir()} == before


def test_bad_case_ids_and_devices_get_one_line(trained: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    model, dataset = trained
    line = refusal(capsys, "--model", model, "--dataset", dataset, "--cases", "nope", "--out", tmp_path / "p")
    assert "--cases: unknown case id nope" in line
    line = refusal(capsys, "--model", model, "--dataset", dataset, "--out", tmp_path / "p", "--device", "gpu")
    assert "--device: unknown device 'gpu'" in line
    assert not (tmp_path / "p").exists()


# -- item 14: wording ------------------------------------------------------------------------------

def test_image_problems_are_named_for_what_they_are(trained: tuple[Path, Path], patient: list[Path],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = trained
    out = tmp_path / "seg.nii.gz"
    stacked = sitk.JoinSeries([sitk.ReadImage(str(p)) for p in patient])
    four_d = tmp_path / "both.nii.gz"
    sitk.WriteImage(stacked, str(four_d))
    line = refusal(capsys, "--model", model, "--image", four_d, "--image", patient[1], "--out", out)
    assert f"{four_d}: is a 4D image" in line and "not on the grid" not in line

    line = refusal(capsys, "--model", model, "--image", tmp_path, "--image", patient[1], "--out", out)
    assert f"{tmp_path}: is a folder, not an image file" in line

    line = refusal(capsys, "--model", model, "--image", patient[0], "--out", out)
    assert "the model expects 2 images (CT, MR)" in line

    array, geometry = read_image(patient[1])
    cropped = tmp_path / "mr_cropped.nii.gz"
    write_image(array[:, :-2], cropped, Geometry.default(array[:, :-2].shape, geometry.spacing))
    line = refusal(capsys, "--model", model, "--image", patient[0], "--image", cropped, "--out", out)
    assert f"{cropped}: not on the grid of {patient[0]} (shape (16, 30, 32) vs (16, 32, 32))" in line
    assert not out.exists()


def test_one_case_is_not_called_cases(trained: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    model, dataset = trained
    case = Dataset(dataset).split(0)["test"][0]
    assert main(["predict", "--model", str(model), "--dataset", str(dataset), "--cases", case,
                 "--out", str(tmp_path / "p"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == f"predicted 1 case into {tmp_path / 'p'}"


# -- item 16: progress in logs -------------------------------------------------------------------

def test_progress_is_logged_at_intervals_when_not_on_a_terminal(
        trained: tuple[Path, Path], patient: list[Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    model, dataset = trained
    monkeypatch.setattr(inference, "PROGRESS_INTERVAL_S", 0.0)
    wide = []  # twice as wide as a patch, so that there are several windows
    for path in patient:
        array, geometry = read_image(path)
        wide.append(tmp_path / f"wide_{path.name}")
        write_image(np.concatenate([array, array], axis=2), wide[-1],
                    Geometry.default((16, 32, 64), geometry.spacing))
    code, err = predict(capsys, "--model", model, *image_args(wide), "--out", tmp_path / "seg.nii.gz")
    windows = [line for line in err if " windows, " in line]
    assert code == 0 and len(windows) > 2
    assert windows[-1].startswith(f"{wide[0].name}: ")
    done = [int(line.split(": ")[1].split("/")[0]) for line in windows]
    assert done == sorted(done) and windows[-1].split(": ")[1].startswith(f"{done[-1]}/{done[-1]} windows")

    case = Dataset(dataset).split(0)["test"][0]
    code, err = predict(capsys, "--model", model, "--dataset", dataset, "--cases", case, "--out", tmp_path / "p")
    assert code == 0 and any(line.startswith(f"{case} (1/1): ") and " windows, " in line for line in err)


def test_progress_callback_leaves_the_probabilities_unchanged() -> None:
    image = torch.randn(2, 20, 40, 40)
    predictor = lambda x: torch.stack([x[:, 0], x[:, 1] * x[:, 0]], dim=1)  # noqa: E731
    calls: list[tuple[int, int]] = []
    plain = sliding_window_probabilities(image, predictor, (16, 32, 32), 2, batch_size=3)
    reported = sliding_window_probabilities(image, predictor, (16, 32, 32), 2, batch_size=3,
                                                      progress=lambda done, total: calls.append((done, total)))
    assert torch.equal(plain, reported)
    total = calls[-1][1]
    assert [done for done, _ in calls] == list(range(3, total, 3)) + [total] and calls[-1] == (total, total)


# -- item 18: spacing ------------------------------------------------------------------------------

def test_new_patient_is_predicted_at_the_model_spacing_and_written_on_its_own_grid(
        trained: tuple[Path, Path], patient: list[Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = trained
    fine = [upsample(path, tmp_path / f"fine_{i}.nii.gz") for i, path in enumerate(patient)]
    code, err = predict(capsys, "--model", model, *image_args(fine), "--out", tmp_path / "seg.nii.gz")
    assert code == 0
    labels, grid = read_image(tmp_path / "seg.nii.gz")
    assert grid.same_grid(read_image(fine[0])[1])

    code, _ = predict(capsys, "--model", model, *image_args(patient), "--out", tmp_path / "coarse.nii.gz")
    coarse = sitk.ReadImage(str(tmp_path / "coarse.nii.gz"))
    upsampled = sitk.Resample(coarse, sitk.ReadImage(str(fine[0])), sitk.Transform(), sitk.sitkNearestNeighbor,
                              0.0, coarse.GetPixelID(), True)  # nearest label also in the outer half voxel
    expected = sitk.GetArrayFromImage(upsampled)
    assert code == 0 and 0 < expected.mean() < 0.5  # a real segmentation, not all one class
    assert np.mean(labels == expected) > 0.995
    assert any("resampling" in line and "0.625" in line for line in err)


def test_dataset_at_another_spacing_is_resampled_with_a_warning(
        trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, dataset = trained
    case = Dataset(dataset).split(0)["test"][0]
    fine = Path(shutil.copytree(dataset, tmp_path / "fine", ignore=shutil.ignore_patterns("*Tr")))
    for path in Dataset(dataset).image_paths(case):
        (fine / "imagesTr").mkdir(exist_ok=True)
        upsample(path, fine / "imagesTr" / path.name)
    meta = json.loads((fine / "dataset.json").read_text())
    meta["spacing"] = [s / 2 for s in meta["spacing"]]
    (fine / "dataset.json").write_text(json.dumps(meta))
    code, err = predict(capsys, "--model", model, "--dataset", fine, "--cases", case, "--out", tmp_path / "p")
    assert code == 0 and any(line.startswith(f"warning: {fine}: spacing") for line in err)
    _, grid = read_image(tmp_path / "p" / f"{case}.nii.gz")
    assert grid.same_grid(Dataset(fine).geometry(case))


def test_model_of_one_selected_channel_takes_one_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = make_tiny_dataset(tmp_path / "tiny", n_cases=4, folds=2)
    model = train_tiny(tmp_path, dataset, "channels: [1]\n", iterations=2)
    mr = Dataset(dataset).image_paths(Dataset(dataset).split(0)["test"][0])[1]
    code, err = predict(capsys, "--model", model, "--image", mr, "--out", tmp_path / "seg.nii.gz")
    assert code == 0, err
    assert read_image(tmp_path / "seg.nii.gz")[1].same_grid(read_image(mr)[1])


@pytest.mark.parametrize("change, difference", [
    ({"spacing": (3.0, 1.25, 2.5)}, "spacing 3 x 1.25 x 2.5 mm vs 3 x 1.25 x 1.25 mm"),
    ({"origin": (0.0, 0.0, 5.0)}, "origin [0.0, 0.0, 5.0] vs [0.0, 0.0, 0.0] mm"),
    ({"direction": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}, "orientation (direction cosines)"),
])
def test_a_channel_off_the_first_images_grid_is_refused_with_what_differs(
        trained: tuple[Path, Path], patient: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: dict[str, tuple[float, ...]], difference: str) -> None:
    """Same shape, another spacing, origin or orientation: the line names that property and both values
    (mutation run of 2026-12-04: only a shape difference was tested)."""
    model, _ = trained
    array, geometry = read_image(patient[0])
    ct = tmp_path / "ct.nii.gz"
    write_image(array, ct, Geometry.default(array.shape, geometry.spacing))
    first = Geometry.default(array.shape, geometry.spacing)
    moved = tmp_path / "mr_moved.nii.gz"
    write_image(read_image(patient[1])[0], moved, Geometry(**{**vars(first), **change}))
    line = refusal(capsys, "--model", model, "--image", ct, "--image", moved, "--out", tmp_path / "seg.nii.gz")
    assert line.endswith(f"{moved}: not on the grid of {ct} ({difference}); resample it onto that grid first "
                         "(cmfnet import paired does that)")
