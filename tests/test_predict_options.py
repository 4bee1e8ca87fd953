"""`cmfnet predict`: every option reaches the model (--set, --overlap, nested --out), and each
refusal names its option or file in one line. Written for the mutation survivors of
2026-12-05 (docs/testing.md): each test failed on the mutant it names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmfnet.cli import main

from cmfnet.data.dataset import Dataset
from cmfnet.evaluation import predict as inference
from cmfnet.training.model import TrainedModel

# the module's trained tiny model and a test case's images, shared with test_predict_reliability
from test_predict_reliability import image_args, patient, predict, refusal, trained, upsample  # noqa: F401


@pytest.fixture
def segment_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The overlap and spacing of every TrainedModel.segment call (the real segment still runs)."""
    calls: list[dict] = []
    real = TrainedModel.segment

    def spy(self: TrainedModel, image: np.ndarray, device, overlap: float = 0.5, spacing=None) -> np.ndarray:
        calls.append({"overlap": overlap, "spacing": spacing})
        return real(self, image, device, overlap=overlap, spacing=spacing)

    monkeypatch.setattr(TrainedModel, "segment", spy)
    return calls


def test_set_reaches_the_model_in_both_modes(trained: tuple[Path, Path], patient: list[Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Fails when --set is dropped on its way to TrainedModel.load (dataset or image mode): a V-Net
    pCE model has no inference-only param, so any --set must be refused."""
    model, dataset = trained
    for args in (["--dataset", dataset, "--out", tmp_path / "p"],
                 [*image_args(patient), "--out", tmp_path / "seg.nii.gz"]):
        line = refusal(capsys, "--model", model, *args, "--set", "params.output=ct")
        assert line == ("cmfnet predict: error: --set: 'params.output' would change what was trained; "
                        "a trained 'pce' model can only change: none")
    assert list(tmp_path.iterdir()) == []


def test_overlap_and_spacing_reach_the_sliding_window(trained: tuple[Path, Path], patient: list[Path],
                                                      tmp_path: Path, segment_calls: list[dict],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Fails when --overlap is not passed on (any mode), or a case's spacing is not handed to segment."""
    model, dataset = trained
    data = Dataset(dataset)
    case = data.split(0)["test"][0]
    assert predict(capsys, "--model", model, "--dataset", dataset, "--cases", case, "--out", tmp_path / "p",
                   "--overlap", "0.25")[0] == 0
    assert predict(capsys, "--model", model, *image_args(patient), "--out", tmp_path / "a.nii.gz",
                   "--overlap", "0")[0] == 0
    fine = [upsample(path, tmp_path / f"fine_{i}.nii.gz") for i, path in enumerate(patient)]
    assert predict(capsys, "--model", model, *image_args(fine), "--out", tmp_path / "b.nii.gz",
                   "--overlap", "0.75")[0] == 0
    spacing = tuple(data.meta["spacing"])
    assert [(c["overlap"], c["spacing"]) for c in segment_calls] == [
        (0.25, pytest.approx(spacing)), (0.0, pytest.approx(spacing)), (0.75, None)]


def test_a_patient_at_the_model_spacing_is_not_resampled(trained: tuple[Path, Path], patient: list[Path],
                                                         tmp_path: Path, segment_calls: list[dict],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Fails when every image is resampled (`or` for `and` in the resampling condition)."""
    model, _ = trained
    code, err = predict(capsys, "--model", model, *image_args(patient), "--out", tmp_path / "seg.nii.gz")
    assert code == 0 and not any("resampl" in line for line in err)
    assert segment_calls[0]["spacing"] is not None  # segment at the image's own spacing


def test_nested_outputs_are_created_and_reported(trained: tuple[Path, Path], patient: list[Path],
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fails when the prediction folder's parents are not made, or on another closing line."""
    model, dataset = trained
    nested = tmp_path / "a" / "b" / "p"
    case = Dataset(dataset).split(0)["test"][0]
    assert predict(capsys, "--model", model, "--dataset", dataset, "--cases", case, "--out", nested)[0] == 0
    assert (nested / f"{case}.nii.gz").is_file()
    out = tmp_path / "seg.nii"  # plain .nii is accepted too
    assert main(["predict", "--device", "cpu", "--model", str(model), *image_args(patient), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}" and out.is_file()


def test_usage_errors_name_their_option(trained: tuple[Path, Path], patient: list[Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    model, dataset = trained
    out = tmp_path / "p"
    assert refusal(capsys, "--model", model, "--dataset", dataset, *image_args(patient), "--out", out) == \
        "cmfnet predict: error: --image: give either --dataset or --image, not both"
    assert refusal(capsys, "--model", model, *image_args(patient), "--cases", "case_000", "--out", out) == \
        "cmfnet predict: error: --cases: only with --dataset (--image segments the one patient given)"
    assert refusal(capsys, "--model", model, "--out", out) == \
        "cmfnet predict: error: --dataset: give --dataset DIR (a fold's test cases) or --image FILE ..."
    missing = tmp_path / "ct.nii.gz"
    assert refusal(capsys, "--model", model, "--image", missing, "--image", patient[1], "--out", out / "s.nii.gz") \
        == f"cmfnet predict: error: {missing}: file not found"
    assert refusal(capsys, "--model", model, "--image", patient[0], "--out", tmp_path / "s.nii.gz").startswith(
        f"cmfnet predict: error: {patient[0]}: the model expects 2 images (CT, MR), one --image per channel")
    with pytest.raises(inference.InputError, match="give one --image per channel of the model") as error:
        inference.predict_files(model, [], tmp_path / "s.nii.gz", device="cpu")
    assert error.value.path == "--image"
    assert not out.exists()


def test_unknown_cases_are_listed_up_to_five(trained: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    model, dataset = trained
    names = [f"x{i}" for i in range(7)]
    line = refusal(capsys, "--model", model, "--dataset", dataset, "--cases", *names, "--out", tmp_path / "p")
    assert line == (f"cmfnet predict: error: --cases: unknown case ids x0, x1, x2, x3, x4: "
                    f"not in {dataset / 'dataset.json'}")


def test_a_fold_without_test_cases_asks_for_cases(trained: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model, dataset = trained
    copy = Path(shutil.copytree(dataset, tmp_path / "copy"))
    meta = json.loads((copy / "dataset.json").read_text())
    fold = meta["splits"][0]
    fold["train"] = fold["train"] + fold["test"]
    fold["test"] = []
    (copy / "dataset.json").write_text(json.dumps(meta))
    line = refusal(capsys, "--model", model, "--dataset", copy, "--out", tmp_path / "p")
    assert line == (f"cmfnet predict: error: {copy / 'dataset.json'}: fold 0 has no test cases; "
                    f"choose some with --cases")


def test_outputs_inside_scribbles_or_an_unwritable_folder_are_refused(
        trained: tuple[Path, Path], patient: list[Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    model, dataset = trained
    copy = Path(shutil.copytree(dataset, tmp_path / "copy"))
    inside = copy / "scribblesTr" / "sim"
    assert refusal(capsys, "--model", model, "--dataset", copy, "--out", inside) == (
        f"cmfnet predict: error: {inside}: is inside the dataset's scribblesTr; predictions would "
        f"overwrite its files")
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(inference.os, "access", lambda path, mode: Path(path) != locked)
    assert refusal(capsys, "--model", model, "--dataset", dataset, "--out", locked / "p") == \
        f"cmfnet predict: error: {locked}: folder is not writable"
    assert refusal(capsys, "--model", model, *image_args(patient), "--out", locked / "s.nii.gz") == \
        f"cmfnet predict: error: {locked}: folder is not writable"


def test_overwrites_are_noted_with_five_names_then_a_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [tmp_path / f"c{i}.nii.gz" for i in range(7)]
    for path in paths:
        path.write_bytes(b"x")
    inference._note_overwrites(paths)
    inference._note_overwrites(paths[:5])
    assert capsys.readouterr().err.strip().splitlines() == [
        f"note: overwriting 7 existing files in {tmp_path}: c0.nii.gz, c1.nii.gz, c2.nii.gz, c3.nii.gz, "
        f"c4.nii.gz and 2 more",
        f"note: overwriting 5 existing files in {tmp_path}: c0.nii.gz, c1.nii.gz, c2.nii.gz, c3.nii.gz, c4.nii.gz"]
