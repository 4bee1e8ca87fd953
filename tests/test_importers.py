"""Importers (`cmfnet import ...`) and preprocessing, on the real files in shared/data/real where
present and on small crafted files for every bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from cmfnet import cli
from cmfnet.data.io import Geometry, read_image
from cmfnet.data.preprocess import CaseVolumes, PreprocessConfig, preprocess_case
from cmfnet.data.splits import kfold_splits
from cmfnet.data.io import nifti_problem
from cmfnet.data.validate import validate_dataset

# the real test volumes: shared/ beside the clone, or wherever CMFNET_REAL_DATA points
REAL = Path(os.environ.get("CMFNET_REAL_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
BRATS_2015 = REAL / "brats2015_deepmedic"
ACDC = REAL / "acdc_scribble_wsl4mis"


@pytest.fixture
def run():
    """The ``cmfnet`` command line, in process."""
    return lambda *argv: cli.main([str(a) for a in argv])


def write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    """A NIfTI from a (z, y, x) array, spacing (z, y, x), origin (x, y, z)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))
    return path


def blob_label(shape=(8, 16, 16), centre=(4, 8, 8), radius=3) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius ** 2).astype(np.uint8)


def error_line(capsys: pytest.CaptureFixture) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1, lines
    return lines[0]


def meta(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text())


# -- real data --------------------------------------------------------------------------------------
@pytest.mark.skipif(not BRATS_2015.is_dir(), reason="shared/data/real/brats2015_deepmedic is absent")
def test_brats_2015_real_whole_tumour_with_body_crop(run, tmp_path, capsys):
    out = tmp_path / "brats"
    assert run("import", "brats", "--src", BRATS_2015, "--modalities", "flair,t1c", "--out", out,
               "--crop-body", "--val-from-train") == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "2 cases" in summary[0] and "FLAIR,T1c" in summary[0]
    info = meta(out)
    assert info["channel_names"] == {"0": "FLAIR", "1": "T1c"}
    assert info["labels"] == {"background": 0, "tumour": 1}
    assert info["normalization"]["FLAIR"] == {"scheme": "none"}  # already z-scored inside the brain
    for case in info["cases"]:
        source = BRATS_2015 / case
        source_label, source_geometry = read_image(source / "OTMultiClass.nii.gz")
        label, geometry = read_image(out / "labelsTr" / f"{case}.nii.gz")
        assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
        assert int(label.sum()) == int((source_label > 0).sum())  # the image-only crop keeps the tumour
        assert np.prod(geometry.shape) < 0.7 * np.prod(source_geometry.shape)  # and does crop
        start = info["preprocessing"]["cases"][case]["crop"]["start_zyx"]
        flair, _ = read_image(source / "Flair_subtrMeanDivStd.nii.gz")
        stored, _ = read_image(out / "imagesTr" / f"{case}_0000.nii.gz")
        box = tuple(slice(a, a + n) for a, n in zip(start, stored.shape, strict=True))
        np.testing.assert_array_equal(stored, flair[box])
        # physical coordinates are preserved: the stored origin is the source point at the crop start
        reference = sitk.ReadImage(str(source / "Flair_subtrMeanDivStd.nii.gz"))
        np.testing.assert_allclose(geometry.origin, reference.TransformIndexToPhysicalPoint(start[::-1]))
    assert all(fold.get("val_from_train") for fold in info["splits"])
    assert validate_dataset(out)[0] == []


@pytest.mark.skipif(not BRATS_2015.is_dir(), reason="shared/data/real/brats2015_deepmedic is absent")
def test_two_brats_cases_need_val_from_train(run, tmp_path, capsys):
    out = tmp_path / "brats"
    assert run("import", "brats", "--src", BRATS_2015, "--modalities", "flair,t1c", "--out", out) == 2
    line = error_line(capsys)
    assert str(BRATS_2015) in line and "--val-from-train" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not ACDC.is_dir(), reason="shared/data/real/acdc_scribble_wsl4mis is absent")
def test_acdc_real_scribbles_and_spacing(run, tmp_path):
    out = tmp_path / "acdc"
    assert run("import", "acdc", "--src", ACDC, "--out", out, "--spacing", 10, 1.5, 1.5) == 0
    info = meta(out)
    assert len(info["cases"]) == 4 and info["labels"]["LV"] == 3
    for case in info["cases"]:
        with h5py.File(ACDC / f"{case}.h5") as handle:
            source_label, source_scribble = handle["label"][()], handle["scribble"][()]
        label, geometry = read_image(out / "labelsTr" / f"{case}.nii.gz")
        scribble, _ = read_image(out / "scribblesTr" / "given" / f"{case}.nii.gz")
        assert geometry.spacing == (10.0, 1.5, 1.5)
        np.testing.assert_array_equal(label, source_label)
        np.testing.assert_array_equal(scribble == 255, source_scribble == 4)
        np.testing.assert_array_equal(scribble[source_scribble < 4], source_scribble[source_scribble < 4])
    # 4 cases: leave-one-out, one validation case disjoint from training
    assert len(info["splits"]) == 4 and not any(f.get("val_from_train") for f in info["splits"])
    assert validate_dataset(out)[0] == []


# -- crafted data -----------------------------------------------------------------------------------
def brats_2019_case(root: Path, case: str, rng: np.random.Generator) -> np.ndarray:
    seg = np.zeros((6, 12, 12), np.uint8)
    seg[1:5, 2:10, 2:10] = 2           # edema
    seg[2:4, 4:8, 4:8] = 1             # necrotic / non-enhancing core
    seg[2:4, 5:7, 5:7] = 4             # enhancing
    folder = root / "HGG" / case
    for token in ("t1", "t1ce", "t2", "flair"):
        write(folder / f"{case}_{token}.nii.gz", (rng.random(seg.shape) * 100 + 1).astype(np.float32))
    write(folder / f"{case}_seg.nii.gz", seg)
    return seg


def test_brats_2019_layout_regions(run, tmp_path):
    rng = np.random.default_rng(0)
    segs = {c: brats_2019_case(tmp_path / "src", c, rng) for c in ("BraTS19_A_1", "BraTS19_B_1", "BraTS19_C_1")}
    out = tmp_path / "out"
    assert run("import", "brats", "--src", tmp_path / "src", "--modalities", "T1CE,flair,t2",
               "--label-set", "regions", "--out", out) == 0
    info = meta(out)
    assert info["channel_names"] == {"0": "T1c", "1": "FLAIR", "2": "T2"}
    assert info["regions"] == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert info["normalization"]["T2"]["scheme"] == "zscore"
    for case, seg in segs.items():
        label, _ = read_image(out / "labelsTr" / f"{case}.nii.gz")
        np.testing.assert_array_equal(label == 1, seg == 2)
        np.testing.assert_array_equal(label == 2, (seg == 1) | (seg == 3))
        np.testing.assert_array_equal(label == 3, seg == 4)
        t2, _ = read_image(tmp_path / "src" / "HGG" / case / f"{case}_t2.nii.gz")
        np.testing.assert_array_equal(read_image(out / "imagesTr" / f"{case}_0002.nii.gz")[0], t2)
    assert len(info["splits"]) == 3  # 3 cases: leave-one-out
    assert validate_dataset(out)[0] == []


def test_acdc_frames_of_one_patient_stay_together(run, tmp_path):
    rng = np.random.default_rng(1)
    for case in ("patient001_frame01", "patient001_frame12", "patient002_frame01", "patient003_frame01",
                 "patient004_frame01"):
        label = blob_label((4, 16, 16), radius=4)
        scribble = np.full(label.shape, 4, np.uint16)
        scribble[2, 8, 6:10], scribble[2, 1, 1:5] = 1, 0
        with h5py.File(tmp_path / f"{case}.h5", "w") as handle:
            handle["image"] = rng.random(label.shape).astype(np.float32)
            handle["label"], handle["scribble"] = label, scribble
    out = tmp_path / "out"
    assert run("import", "acdc", "--src", tmp_path, "--out", out, "--spacing", 5, 1.5, 1.5) == 0
    info = meta(out)
    assert len(info["splits"]) == 4  # four patients
    for fold in info["splits"]:
        parts = [p for p in ("train", "val", "test") if "patient001_frame01" in fold[p]]
        assert parts and all("patient001_frame12" in fold[p] for p in parts)
    assert validate_dataset(out)[0] == []


def make_word(root: Path, parts=(("Tr", 3), ("Val", 1), ("Ts", 1))) -> dict[str, np.ndarray]:
    labels = {}
    k = 0
    for part, count in parts:
        for _ in range(count):
            case = f"word_{k:04d}"
            k += 1
            label = np.zeros((4, 17, 6), np.uint8)
            for organ in range(17):
                label[:, organ, :3] = organ   # every WORD id 0..16 present
            write(root / f"images{part}" / f"{case}.nii.gz", np.full(label.shape, -100, np.int16) + label)
            write(root / f"labels{part}" / f"{case}.nii.gz", label)
            labels[case] = label
            if part == "Tr":
                scribble = np.full(label.shape, 255, np.uint8)
                scribble[1, :, 1] = label[1, :, 1]
                write(root / "scribblesTr" / f"{case}.nii.gz", scribble)
    return labels


def test_word_remap_scribbles_and_fixed_split(run, tmp_path):
    labels = make_word(tmp_path / "WORD")
    out = tmp_path / "word"
    assert run("import", "word", "--src", tmp_path / "WORD", "--out", out) == 0
    info = meta(out)
    assert info["labels"] == {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4,
                              "stomach": 5, "gallbladder": 6, "pancreas": 7}
    assert info["splits"] == [{"train": ["word_0000", "word_0001", "word_0002"], "val": ["word_0003"],
                               "test": ["word_0004"]}]
    expected = {**{v: v for v in range(7)}, 7: 0, 8: 7, **{v: 0 for v in range(9, 17)}}
    for case, source in labels.items():
        label, _ = read_image(out / "labelsTr" / f"{case}.nii.gz")
        np.testing.assert_array_equal(label, np.vectorize(expected.get)(source))
    scribbles = sorted(p.name for p in (out / "scribblesTr" / "given").iterdir())
    assert scribbles == ["word_0000.nii.gz", "word_0001.nii.gz", "word_0002.nii.gz"]
    scribble, _ = read_image(out / "scribblesTr" / "given" / "word_0000.nii.gz")
    assert set(np.unique(scribble)) == {0, 1, 2, 3, 4, 5, 6, 7, 255}
    assert (scribble == 255).sum() == scribble.size - 17  # one voxel per WORD id was scribbled
    assert info["normalization"] == {"CT": {"scheme": "ct", "window": [-160.0, 240.0]}}
    assert validate_dataset(out)[0] == []


def nnunet_source(root: Path, cases: int, channels=("CT", "T2"), splits: list | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": {"background": 0, "tumour": 1},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    rng = np.random.default_rng(2)
    for k in range(cases):
        for c in range(len(channels)):
            write(root / "imagesTr" / f"npc_{k:03d}_{c:04d}.nii.gz", rng.normal(size=(8, 16, 16)).astype(np.float32))
        write(root / "labelsTr" / f"npc_{k:03d}.nii.gz", blob_label())
    if splits is not None:
        (root / "splits_final.json").write_text(json.dumps(splits))
    return root


def test_nnunet_kfold_matches_cmfnet_splits(run, tmp_path):
    src = nnunet_source(tmp_path / "Dataset001_NPC", 6)
    out = tmp_path / "npc"
    assert run("import", "nnunet", "--src", src, "--out", out) == 0
    info = meta(out)
    assert info["channel_names"] == {"0": "CT", "1": "T2"}
    assert info["normalization"]["CT"]["scheme"] == "ct" and info["normalization"]["T2"]["scheme"] == "zscore"
    assert info["splits"] == kfold_splits(info["cases"], 5, seed=12345)
    assert validate_dataset(out)[0] == []


def test_nnunet_splits_final_become_test_folds(run, tmp_path):
    cases = [f"npc_{k:03d}" for k in range(4)]
    folds = [{"train": cases[2:], "val": cases[:2]}, {"train": cases[:2], "val": cases[2:]}]
    src = nnunet_source(tmp_path / "Dataset001_NPC", 4, splits=folds)
    out = tmp_path / "npc"
    assert run("import", "nnunet", "--src", src, "--out", out) == 0
    info = meta(out)
    for ours, theirs in zip(info["splits"], folds, strict=True):
        assert ours["test"] == theirs["val"]
        assert sorted(ours["train"] + ours["val"]) == theirs["train"] and ours["val"] and ours["train"]
    assert validate_dataset(out)[0] == []


def test_nnunet_splits_final_must_be_a_cross_validation(run, tmp_path, capsys):
    cases = [f"npc_{k:03d}" for k in range(4)]
    folds = [{"train": cases[1:], "val": cases[:1]}, {"train": cases[:2], "val": cases[2:]}]  # npc_001 never held out
    src = nnunet_source(tmp_path / "Dataset001_NPC", 4, splits=folds)
    assert run("import", "nnunet", "--src", src, "--out", tmp_path / "npc") == 2
    assert error_line(capsys).startswith(f"cmfnet import: error: {src / 'splits_final.json'}: ")
    assert not (tmp_path / "npc").exists()


def smooth(points: np.ndarray) -> np.ndarray:
    """A smooth intensity field of physical (x, y, z) points, for checking resampling."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.sin(x / 9.0) + np.cos(y / 7.0) + z / 20.0


def field_image(path: Path, shape, spacing, scale=1.0, offset=0.0, shift=(0.0, 0.0, 0.0)) -> Path:
    """An image of ``smooth`` sampled on a grid; ``shift`` moves the content by (x, y, z) mm."""
    z, y, x = np.indices(shape).astype(float)
    points = np.stack([x * spacing[2], y * spacing[1], z * spacing[0]], axis=-1) - np.asarray(shift)
    return write(path, (scale * smooth(points) + offset).astype(np.float32), spacing)


def test_paired_resamples_onto_first_grid(run, tmp_path):
    ct = field_image(tmp_path / "ct.nii.gz", (6, 40, 40), (3.0, 1.27, 1.27), scale=100.0)
    mr = field_image(tmp_path / "mr.nii.gz", (6, 39, 39), (3.0, 1.30, 1.30), scale=2.0, offset=5.0)
    label = write(tmp_path / "label.nii.gz", blob_label((6, 40, 40), (3, 20, 20), 3), (3.0, 1.27, 1.27))
    scribble_mr = np.full((6, 39, 39), 255, np.uint8)
    scribble_mr[3, 18:22, 18:22], scribble_mr[3, 2:6, 2:6] = 1, 0
    scribble = write(tmp_path / "scribble.nii.gz", scribble_mr, (3.0, 1.30, 1.30))
    out = tmp_path / "npc"
    assert run("import", "paired", "--out", out, "--case", "p001", "--image", ct, "--image", mr, "--label", label,
               "--scribble", scribble, "--channel-names", "CT,MR", "--labels", "background=0,tumour=1") == 0
    stored_ct, ct_grid = read_image(out / "imagesTr" / "p001_0000.nii.gz")
    stored_mr, mr_grid = read_image(out / "imagesTr" / "p001_0001.nii.gz")
    assert mr_grid.same_grid(ct_grid) and ct_grid.spacing == pytest.approx((3.0, 1.27, 1.27))
    np.testing.assert_array_equal(stored_ct, read_image(ct)[0])
    z, y, x = np.indices(ct_grid.shape).astype(float)
    expected = 2.0 * smooth(np.stack([x * 1.27, y * 1.27, z * 3.0], axis=-1)) + 5.0
    inside = (x * 1.27 <= 38 * 1.30) & (y * 1.27 <= 38 * 1.30)  # within the MR field of view
    assert np.abs(stored_mr - expected)[inside].max() < 0.02
    stored_scribble, scribble_grid = read_image(out / "scribblesTr" / "given" / "p001.nii.gz")
    assert scribble_grid.same_grid(ct_grid) and set(np.unique(stored_scribble)) == {0, 1, 255}
    info = meta(out)
    assert info["normalization"]["CT"]["scheme"] == "ct" and info["normalization"]["MR"]["scheme"] == "zscore"
    assert info["splits"] == []  # one case: no splits yet


@pytest.mark.parametrize("convention, unlabelled", [("255", 255), ("highest", 2)])
def test_paired_scribble_unlabelled_conventions_are_stored_as_255(run, tmp_path, convention, unlabelled):
    """WSL4MIS's and nnU-Net's unlabelled value (the class count) and ours both land as 255."""
    shape, spacing = (4, 16, 16), (3.0, 1.0, 1.0)
    images = [write(tmp_path / f"{m}.nii.gz", np.ones(shape, np.float32), spacing) for m in ("ct", "mr")]
    label = write(tmp_path / "label.nii.gz", blob_label(shape, (2, 8, 8), 3), spacing)
    source = np.full(shape, unlabelled, np.uint8)
    source[2, 8, 7:9], source[2, 1, 1:4] = 1, 0
    scribble = write(tmp_path / "scribble.nii.gz", source, spacing)
    out = tmp_path / "npc"
    assert run("import", "paired", "--out", out, "--case", "p1", "--image", images[0], "--image", images[1],
               "--label", label, "--scribble", scribble, "--scribble-unlabelled", convention, "--no-resample",
               "--channel-names", "CT,MR", "--labels", "background=0,tumour=1") == 0
    stored, _ = read_image(out / "scribblesTr" / "given" / "p1.nii.gz")
    np.testing.assert_array_equal(stored == 255, source == unlabelled)
    np.testing.assert_array_equal(stored[source != unlabelled], source[source != unlabelled])


def test_paired_scribble_in_another_convention_is_refused(run, tmp_path, capsys):
    """A WSL4MIS-style scribble (2 = unlabelled for two classes) imported as ours names the file."""
    shape, spacing = (4, 16, 16), (3.0, 1.0, 1.0)
    images = [write(tmp_path / f"{m}.nii.gz", np.ones(shape, np.float32), spacing) for m in ("ct", "mr")]
    label = write(tmp_path / "label.nii.gz", blob_label(shape, (2, 8, 8), 3), spacing)
    source = np.full(shape, 2, np.uint8)
    source[2, 8, 7:9] = 1
    scribble = write(tmp_path / "scribble.nii.gz", source, spacing)
    assert run("import", "paired", "--out", tmp_path / "npc", "--case", "p1", "--image", images[0], "--image",
               images[1], "--label", label, "--scribble", scribble, "--no-resample",
               "--channel-names", "CT,MR", "--labels", "background=0,tumour=1") == 2
    assert "scribble.nii.gz" in capsys.readouterr().err


def test_paired_register_recovers_shift(run, tmp_path):
    shape, spacing, shift = (24, 40, 40), (2.0, 2.0, 2.0), (4.0, -3.0, 2.0)
    z, y, x = np.indices(shape).astype(float) * 2.0

    def phantom(dx=0.0, dy=0.0, dz=0.0) -> np.ndarray:
        return (np.exp(-(((z - 24 - dz) / 9) ** 2 + ((y - 40 - dy) / 14) ** 2 + ((x - 40 - dx) / 8) ** 2))
                + 0.6 * np.exp(-(((z - 16 - dz) / 5) ** 2 + ((y - 50 - dy) / 5) ** 2 + ((x - 30 - dx) / 6) ** 2)))

    ct = write(tmp_path / "ct.nii.gz", (1000 * phantom()).astype(np.float32), spacing)
    mr = write(tmp_path / "mr.nii.gz", (100 - 80 * phantom(*shift)).astype(np.float32), spacing)  # inverted contrast
    label = write(tmp_path / "label.nii.gz", (phantom() > 0.5).astype(np.uint8), spacing)
    out = tmp_path / "npc"
    assert run("import", "paired", "--out", out, "--case", "p1", "--image", ct, "--image", mr, "--label", label,
               "--register", "--channel-names", "CT,MR", "--labels", "background=0,tumour=1") == 0
    registration = meta(out)["preprocessing"]["cases"]["p1"]["registration"]["MR"]
    np.testing.assert_allclose(registration["translation_mm_xyz"], shift, atol=0.5)
    aligned, _ = read_image(out / "imagesTr" / "p1_0001.nii.gz")
    centre = (slice(6, 18), slice(8, 32), slice(8, 32))
    error = np.abs(aligned - (100 - 80 * phantom()))[centre]
    unaligned = np.abs(read_image(mr)[0] - (100 - 80 * phantom()))[centre]
    assert error.mean() < 0.1 * unaligned.mean() and error.max() < 5.0  # contrast range is 80


def paired_case(root: Path, case: str, label_values=(0, 1), spacing_mr=(3.0, 1.0, 1.0), scribble=None) -> list:
    rng = np.random.default_rng(abs(hash(case)) % 1000)
    ct = write(root / case / "ct.nii.gz", rng.normal(size=(6, 16, 16)).astype(np.float32), (3.0, 1.0, 1.0))
    mr = write(root / case / "mr.nii.gz", rng.normal(size=(6, 16, 16)).astype(np.float32), spacing_mr)
    label = blob_label((6, 16, 16), (3, 8, 8), 3) * np.uint8(label_values[1])
    args = ["import", "paired", "--case", case, "--image", ct, "--image", mr,
            "--label", write(root / case / "label.nii.gz", label, (3.0, 1.0, 1.0))]
    if scribble is not None:
        args += ["--scribble", write(root / case / "scribble.nii.gz", scribble, (3.0, 1.0, 1.0))]
    return args


NEW = ["--channel-names", "CT,MR", "--labels", "background=0,tumour=1"]


def test_paired_adds_cases_and_recomputes_splits(run, tmp_path, capsys):
    out = tmp_path / "npc"
    for k in range(4):
        assert run(*paired_case(tmp_path / "src", f"p{k}"), "--out", out, *(NEW if k == 0 else [])) == 0
        info = meta(out)
        assert info["cases"] == [f"p{i}" for i in range(k + 1)] and info["numTraining"] == k + 1
        assert len(info["splits"]) == (0 if k < 2 else k + 1)  # 3 and 4 cases: leave-one-out
    assert validate_dataset(out)[0] == []
    before = (out / "dataset.json").read_text()
    capsys.readouterr()
    assert run(*paired_case(tmp_path / "src", "p2"), "--out", out) == 2  # duplicate case id
    assert "duplicate case id 'p2'" in error_line(capsys)
    assert run(*paired_case(tmp_path / "src", "p9"), "--out", out, "--channel-names", "MR,CT") == 2
    assert "dataset channels" in error_line(capsys)
    assert (out / "dataset.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["npc", "src"]  # no temporary leftovers


def test_paired_two_cases_with_val_from_train(run, tmp_path):
    out = tmp_path / "npc"
    assert run(*paired_case(tmp_path / "src", "a"), "--out", out, *NEW, "--val-from-train") == 0
    assert run(*paired_case(tmp_path / "src", "b"), "--out", out) == 0  # the flag is remembered
    splits = meta(out)["splits"]
    assert [s["train"] == s["val"] for s in splits] == [True, True]
    assert validate_dataset(out)[0] == []


# -- bad input: one line naming the file, exit 2, nothing left behind -------------------------------
def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def scenario_truncated(root: Path) -> tuple[list, Path]:
    src = nnunet_source(root / "src", 3)
    return ["import", "nnunet", "--src", src], truncate(src / "imagesTr" / "npc_001_0001.nii.gz")


def scenario_corrupt(root: Path) -> tuple[list, Path]:
    src = nnunet_source(root / "src", 3)
    bad = src / "labelsTr" / "npc_002.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    return ["import", "nnunet", "--src", src], bad


def scenario_missing_modality(root: Path) -> tuple[list, Path]:
    src = nnunet_source(root / "src", 3)
    missing = src / "imagesTr" / "npc_001_0001.nii.gz"
    missing.unlink()
    return ["import", "nnunet", "--src", src], missing


def scenario_grids_no_resample(root: Path) -> tuple[list, Path]:
    args = paired_case(root, "p0", spacing_mr=(3.0, 1.3, 1.3))
    return args + NEW + ["--no-resample"], args[args.index("--image") + 3]


def scenario_nan_image(root: Path) -> tuple[list, Path]:
    args = paired_case(root, "p0")
    mr = args[args.index("--image") + 3]
    image = read_image(mr)[0]
    image[2, 3, 4] = np.nan
    write(mr, image, (3.0, 1.0, 1.0))
    return args + NEW, mr


def scenario_label_outside_classes(root: Path) -> tuple[list, Path]:
    args = paired_case(root, "p0", label_values=(0, 2))
    return args + NEW, args[args.index("--label") + 1]


def scenario_empty_label(root: Path) -> tuple[list, Path]:
    args = paired_case(root, "p0", label_values=(0, 0))
    return args + NEW, args[args.index("--label") + 1]


def scenario_empty_scribble(root: Path) -> tuple[list, Path]:
    args = paired_case(root, "p0", scribble=np.full((6, 16, 16), 255, np.uint8))
    return args + NEW, args[args.index("--scribble") + 1]


def scenario_duplicate_word_case(root: Path) -> tuple[list, Path]:
    make_word(root / "WORD")
    duplicate = root / "WORD" / "imagesTs" / "word_0000.nii.gz"
    shutil.copy(root / "WORD" / "imagesTr" / "word_0000.nii.gz", duplicate)
    return ["import", "word", "--src", root / "WORD"], duplicate


def scenario_missing_word_scribble(root: Path) -> tuple[list, Path]:
    make_word(root / "WORD")
    missing = root / "WORD" / "scribblesTr" / "word_0001.nii.gz"
    missing.unlink()
    return ["import", "word", "--src", root / "WORD"], missing


def scenario_acdc_empty_scribble(root: Path) -> tuple[list, Path]:
    for k in range(3):
        label = blob_label((4, 12, 12), (2, 6, 6), 3)
        scribble = np.full(label.shape, 4, np.uint16)
        if k != 1:
            scribble[2, 6, 4:8] = 1
        with h5py.File(root / f"patient{k:03d}_frame01.h5", "w") as handle:
            handle["image"], handle["label"], handle["scribble"] = label.astype(np.float32), label, scribble
    return ["import", "acdc", "--src", root, "--spacing", 5, 1.5, 1.5], root / "patient001_frame01.h5"


@pytest.mark.parametrize("scenario", [
    scenario_truncated, scenario_corrupt, scenario_nan_image, scenario_missing_modality, scenario_grids_no_resample,
    scenario_label_outside_classes, scenario_empty_label, scenario_empty_scribble, scenario_duplicate_word_case,
    scenario_missing_word_scribble, scenario_acdc_empty_scribble])
def test_bad_input_exits_2_naming_the_file(run, tmp_path, capsys, scenario):
    source = tmp_path / "source"
    source.mkdir()
    argv, culprit = scenario(source)
    out = tmp_path / "out"
    assert run(*argv, "--out", out) == 2
    line = error_line(capsys)
    assert line.startswith(f"cmfnet import: error: {culprit}:"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]  # no dataset, no temporary folder


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(run, tmp_path, capsys):
    precious = tmp_path / "home"
    (precious / "notes.txt").parent.mkdir()
    (precious / "notes.txt").write_text("keep me")
    argv = paired_case(tmp_path / "src", "p0") + NEW
    assert run(*argv, "--out", precious) == 2
    assert "not a dataset folder" in error_line(capsys)
    assert (precious / "notes.txt").read_text() == "keep me"


# -- preprocessing ----------------------------------------------------------------------------------
def ct_phantom(shape=(20, 48, 48), spacing=(2.0, 1.0, 1.0)) -> tuple[sitk.Image, np.ndarray]:
    z, y, x = np.indices(shape)
    body = ((y - 24) / 14.0) ** 2 + ((x - 22) / 10.0) ** 2 <= 1
    body &= (z >= 3) & (z < 17)
    array = np.where(body, 40, -1000).astype(np.int16)
    array[:, 44:46, :] = 200  # the couch: dense, but not connected to the body
    return Geometry.default(shape, spacing).apply(sitk.GetImageFromArray(array)), body


def test_crop_body_uses_the_images_only(tmp_path):
    image, body = ct_phantom()
    boxes = []
    for label_array in (np.zeros(body.shape, np.uint8), body.astype(np.uint8)):
        label_array = label_array.copy()
        label_array[10, 20:23, 20:23] = 1
        label = sitk.GetImageFromArray(label_array)
        label.CopyInformation(image)
        case = preprocess_case(CaseVolumes("c", [image], label), ["ct"],
                               PreprocessConfig(crop_body=True, crop_margin_mm=2.0))
        boxes.append(case.record["crop"])
    assert boxes[0]["start_zyx"] == boxes[1]["start_zyx"] and boxes[0]["stop_zyx"] == boxes[1]["stop_zyx"]
    zs, ys, xs = (np.flatnonzero(body.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    # margin 2 mm: one slice in z (2 mm), two voxels in y and x (1 mm); the couch is left out
    assert boxes[0]["start_zyx"] == [zs[0] - 1, ys[0] - 2, xs[0] - 2]
    assert boxes[0]["stop_zyx"] == [zs[-1] + 2, ys[-1] + 3, xs[-1] + 3]


def test_target_spacing_resamples_images_and_labels(tmp_path):
    image, body = ct_phantom()
    label = sitk.GetImageFromArray(body.astype(np.uint8) * 1)
    label.CopyInformation(image)
    case = preprocess_case(CaseVolumes("c", [image], label), ["ct"], PreprocessConfig(target_spacing=(4.0, 2.0, 2.0)))
    assert case.record["shape"] == [10, 24, 24] and case.record["spacing"] == [4.0, 2.0, 2.0]
    stored = sitk.GetArrayFromImage(case.label)
    assert set(np.unique(stored)) == {0, 1}
    assert abs(stored.sum() * 16 - body.sum() * 2) < 0.15 * body.sum() * 2  # volume kept (mm³)


def test_nifti_problem_detects_truncation(tmp_path):
    for name in ("a.nii.gz", "a.nii"):
        path = write(tmp_path / name, np.ones((8, 8, 8), np.float32))
        assert nifti_problem(path) is None
        assert "truncated" in nifti_problem(truncate(path))


# -- reruns: leftovers of a killed import, replacing a dataset ---------------------------------------
def killed_write_leftover(out: Path) -> Path:
    """What SIGKILL during atomic_dir(out) leaves: a hidden, half-filled ``.NAME.XXXXXXXX.part`` folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    leftover = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    (leftover / "imagesTr").mkdir()
    (leftover / "imagesTr" / "half.nii.gz").write_bytes(b"\x1f\x8b")
    return leftover


def test_rerun_removes_only_its_own_partial_folders(run, tmp_path, capsys):
    out = tmp_path / "data" / "npc"
    mine = killed_write_leftover(out)
    other = killed_write_leftover(tmp_path / "data" / "npc2")  # another dataset's import, maybe running
    src = nnunet_source(tmp_path / "Dataset001_NPC", 3)
    assert run("import", "nnunet", "--src", src, "--out", out, "--val-from-train") == 0
    err = capsys.readouterr().err
    assert f"note: removed {mine}, left by a killed earlier write" in err
    assert not mine.exists() and other.is_dir()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["npc", other.name])


def test_paired_restores_the_dataset_a_kill_left_as_old(run, tmp_path, capsys):
    """Killed between atomic_dir's two renames: no npc/, the previous dataset in .npc.old."""
    out = tmp_path / "npc"
    assert run(*paired_case(tmp_path / "src", "p0"), "--out", out, *NEW) == 0
    os.replace(out, tmp_path / ".npc.old")
    killed_write_leftover(out)
    assert run(*paired_case(tmp_path / "src", "p1"), "--out", out) == 0
    assert "restored the previous folder from .npc.old" in capsys.readouterr().err
    assert meta(out)["cases"] == ["p0", "p1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["npc", "src"]


@pytest.mark.parametrize("importer", ["nnunet", "word", "acdc", "brats"])
def test_whole_dataset_import_replaces_a_dataset_only_with_force(run, tmp_path, capsys, importer):
    if importer == "nnunet":
        argv = ["--src", nnunet_source(tmp_path / "src", 3), "--val-from-train"]
    elif importer == "word":
        make_word(tmp_path / "src")
        argv = ["--src", tmp_path / "src"]
    elif importer == "acdc":
        (tmp_path / "acdc_src").mkdir()
        argv = scenario_acdc_empty_scribble(tmp_path / "acdc_src")[0][2:]
        (tmp_path / "acdc_src" / "patient001_frame01.h5").unlink()  # the empty scribble
        argv += ["--val-from-train"]
    else:
        rng = np.random.default_rng(0)
        for case in ("BraTS19_A_1", "BraTS19_B_1", "BraTS19_C_1"):
            brats_2019_case(tmp_path / "src", case, rng)
        argv = ["--src", tmp_path / "src", "--modalities", "flair,t1ce"]
    out = tmp_path / "out"
    assert run("import", importer, *argv, "--out", out) == 0
    (out / "scribblesTr" / "sim").mkdir(parents=True)
    (out / "scribblesTr" / "sim" / "coverage.json").write_text("{}")  # what `cmfnet scribble` made
    before = (out / "dataset.json").read_text()
    capsys.readouterr()
    assert run("import", importer, *argv, "--out", out) == 2
    line = error_line(capsys)
    assert line.startswith(f"cmfnet import: error: {out}: already holds a dataset") and "sim" in line
    assert "--force" in line and (out / "dataset.json").read_text() == before
    assert (out / "scribblesTr" / "sim" / "coverage.json").is_file()
    assert run("import", importer, *argv, "--out", out, "--force") == 0
    assert not (out / "scribblesTr" / "sim").exists()


def test_snakemake_rerun_rebuilds_an_import_whose_dataset_json_it_deleted(run, tmp_path):
    src = nnunet_source(tmp_path / "src", 3)
    out = tmp_path / "out"
    assert run("import", "nnunet", "--src", src, "--out", out, "--val-from-train") == 0
    (out / "dataset.json").unlink()  # Snakemake removes a job's outputs before rerunning it
    assert run("import", "nnunet", "--src", src, "--out", out, "--val-from-train") == 0
    assert meta(out)["cases"] == ["npc_000", "npc_001", "npc_002"]


def test_paired_appends_without_force(run, tmp_path):
    out = tmp_path / "npc"
    assert run(*paired_case(tmp_path / "src", "p0"), "--out", out, *NEW) == 0
    assert run(*paired_case(tmp_path / "src", "p1"), "--out", out) == 0
    assert meta(out)["cases"] == ["p0", "p1"]


# -- --labels as a JSON file ------------------------------------------------------------------------
def test_labels_from_a_json_file(run, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"background": 0, "tumour": 1}))
    out = tmp_path / "npc"
    assert run(*paired_case(tmp_path / "src", "p0"), "--out", out, "--channel-names", "CT,MR",
               "--labels", labels) == 0
    assert meta(out)["labels"] == {"background": 0, "tumour": 1}
    nnunet_style = tmp_path / "dataset.json"
    nnunet_style.write_text(json.dumps({"labels": {"background": 0, "tumour": 1}, "channel_names": {}}))
    assert run(*paired_case(tmp_path / "src", "p1"), "--out", out, "--labels", nnunet_style) == 0


@pytest.mark.parametrize("content, problem", [
    ('{"background": 0, "tumour": "one"}', "label 'tumour' has value \"one\", not an integer id"),
    ('{"background": 0, "tumour": 2}', "ids must be 0..K with background=0"),
    ('["background", "tumour"]', "expected a JSON object of class names to ids"),
    ('{"background": 0,', "invalid JSON"),
])
def test_bad_labels_file_is_one_line_naming_it(run, tmp_path, capsys, content, problem):
    labels = tmp_path / "labels.json"
    labels.write_text(content)
    assert run(*paired_case(tmp_path / "src", "p0"), "--out", tmp_path / "npc", "--channel-names", "CT,MR",
               "--labels", labels) == 2
    line = error_line(capsys)
    assert line.startswith(f"cmfnet import: error: {labels}: ") and problem in line, line
    assert not (tmp_path / "npc").exists()


# -- wording of bad input ---------------------------------------------------------------------------
def test_directory_given_as_image_is_called_a_directory(run, tmp_path, capsys):
    args = paired_case(tmp_path / "src", "p0")
    series = tmp_path / "dicom_series"
    series.mkdir()
    args[args.index("--image") + 3] = series
    assert run(*args, "--out", tmp_path / "npc", *NEW) == 2
    line = error_line(capsys)
    assert line.startswith(f"cmfnet import: error: {series}: is a directory, not an image file"), line
    assert "missing" not in line


def test_label_outside_the_field_of_view_says_so(run, tmp_path, capsys):
    args = paired_case(tmp_path / "src", "p0")
    label = args[args.index("--label") + 1]
    write(label, blob_label((6, 16, 16), (3, 8, 8), 3), (3.0, 1.0, 1.0), origin=(500.0, 0.0, 0.0))
    assert run(*args, "--out", tmp_path / "npc", *NEW) == 2
    line = error_line(capsys)
    assert line.startswith(f"cmfnet import: error: {label}: label lies outside the field of view of "), line
    assert "empty" not in line


def test_label_partly_outside_the_field_of_view_warns(run, tmp_path, capsys):
    args = paired_case(tmp_path / "src", "p0")
    label = args[args.index("--label") + 1]
    write(label, blob_label((6, 16, 16), (3, 8, 8), 3), (3.0, 1.0, 1.0), origin=(10.0, 0.0, 0.0))
    assert run(*args, "--out", tmp_path / "npc", *NEW) == 0
    assert re.search(rf"warning: {re.escape(str(label))}: \d+ of \d+ labelled voxels lie outside the field of "
                     "view", capsys.readouterr().err)


def test_bad_case_id_names_the_id(run, tmp_path, capsys):
    args = paired_case(tmp_path / "src", "p0")
    args[args.index("--case") + 1] = "p 0/x"
    assert run(*args, "--out", tmp_path / "npc", *NEW) == 2
    line = error_line(capsys)
    assert line.startswith("cmfnet import: error: case id 'p 0/x': invalid (from --case)"), line


def test_bad_case_id_from_a_file_name_names_the_id_and_the_file(run, tmp_path, capsys):
    src = nnunet_source(tmp_path / "src", 3)
    bad = src / "imagesTr" / "npc 9_0000.nii.gz"
    shutil.copy(src / "imagesTr" / "npc_000_0000.nii.gz", bad)
    assert run("import", "nnunet", "--src", src, "--out", tmp_path / "npc") == 2
    line = error_line(capsys)
    assert line.startswith(f"cmfnet import: error: case id 'npc 9': invalid (from {bad})"), line


@pytest.mark.parametrize("value, problem", [
    ('"zero"', "label 'background' has value \"zero\", not an integer id"),
    ("[1, 2]", "label 'background' is region-based ([1, 2])"),
])
def test_nnunet_label_values_are_named(run, tmp_path, capsys, value, problem):
    src = nnunet_source(tmp_path / "src", 3)
    info = json.loads((src / "dataset.json").read_text())
    info["labels"]["background"] = json.loads(value)
    (src / "dataset.json").write_text(json.dumps(info))
    assert run("import", "nnunet", "--src", src, "--out", tmp_path / "npc") == 2
    line = error_line(capsys)
    assert line == f"cmfnet import: error: {src / 'dataset.json'}: {problem}" + (
        ": not supported; give one id per class" if "region" in problem else ""), line


def test_one_case_is_not_called_cases(run, tmp_path, capsys):
    out = tmp_path / "npc"
    assert run(*paired_case(tmp_path / "src", "p0"), "--out", out, *NEW) == 0
    captured = capsys.readouterr()
    assert f"{out}: 1 case, " in captured.out and "1 case(s)" not in captured.err
    assert "1 case: cross-validation needs at least 2 cases" in captured.err
    assert run("validate", out) == 2  # no splits yet
    assert "cmfnet validate: 1 problem in" in capsys.readouterr().out


# -- progress when not on a terminal ----------------------------------------------------------------
def test_multi_case_import_logs_one_line_per_case(run, tmp_path, capsys):
    src = nnunet_source(tmp_path / "src", 3)
    assert run("import", "nnunet", "--src", src, "--out", tmp_path / "npc", "--val-from-train") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("import: case ")]
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"]
    assert [line.split()[3] for line in lines] == ["npc_000", "npc_001", "npc_002"]


# -- registration sanity ----------------------------------------------------------------------------
def registration_pair(root: Path, shift: tuple[float, float, float], noise: float = 0.0) -> list:
    """A CT-like and an inverted-contrast MR-like phantom on one grid, the MR content moved by ``shift``
    (x, y, z) mm, as paired-import arguments."""
    shape, spacing = (24, 40, 40), (2.0, 2.0, 2.0)
    z, y, x = np.indices(shape).astype(float) * 2.0
    rng = np.random.default_rng(0)

    def phantom(dx=0.0, dy=0.0, dz=0.0) -> np.ndarray:
        return (np.exp(-(((z - 24 - dz) / 9) ** 2 + ((y - 40 - dy) / 14) ** 2 + ((x - 40 - dx) / 8) ** 2))
                + 0.6 * np.exp(-(((z - 16 - dz) / 5) ** 2 + ((y - 50 - dy) / 5) ** 2 + ((x - 30 - dx) / 6) ** 2)))

    ct = write(root / "ct.nii.gz", (1000 * phantom() + 10 * noise * rng.normal(size=shape)).astype(np.float32), spacing)
    mr = write(root / "mr.nii.gz", (100 - 80 * phantom(*shift) + noise * rng.normal(size=shape)).astype(np.float32),
               spacing)
    label = write(root / "label.nii.gz", (phantom() > 0.5).astype(np.uint8), spacing)
    return ["import", "paired", "--case", "p1", "--image", ct, "--image", mr, "--label", label, "--register",
            *NEW]


@pytest.mark.parametrize("noise", [0.0, 3.0])
def test_register_keeps_an_aligned_pair_as_it_is(run, tmp_path, capsys, noise):
    argv = registration_pair(tmp_path, (0.0, 0.0, 0.0), noise)
    out = tmp_path / "npc"
    assert run(*argv, "--out", out) == 0
    record = meta(out)["preprocessing"]["cases"]["p1"]["registration"]["MR"]
    assert record["applied"].startswith("identity")
    assert record["mutual_information_after"] <= record["mutual_information_before"] * 1.01
    np.testing.assert_array_equal(read_image(out / "imagesTr" / "p1_0001.nii.gz")[0], read_image(argv[7])[0])
    assert "registration did not improve mutual information" in capsys.readouterr().err


def test_register_reports_the_metric_and_improves_a_shifted_pair(run, tmp_path, capsys):
    out = tmp_path / "npc"
    assert run(*registration_pair(tmp_path, (4.0, -3.0, 2.0)), "--out", out) == 0
    record = meta(out)["preprocessing"]["cases"]["p1"]["registration"]["MR"]
    assert record["applied"] == "registration"
    assert record["mutual_information_after"] > 1.2 * record["mutual_information_before"]
    err = capsys.readouterr().err
    assert re.search(r"register MR onto CT: mutual information [\d.]+ -> [\d.]+; applied: registration", err)
    assert "warning" not in err


def test_register_warns_beyond_the_stated_bound(run, tmp_path, capsys):
    out = tmp_path / "npc"
    assert run(*registration_pair(tmp_path, (12.0, 0.0, 0.0)), "--out", out) == 0
    record = meta(out)["preprocessing"]["cases"]["p1"]["registration"]["MR"]
    assert record["translation_mm_xyz"][0] == pytest.approx(12.0, abs=1.0)
    assert re.search(r"warning: .*mr\.nii\.gz: moves by 1\d\.\d mm .*beyond 10 mm / 5 deg", capsys.readouterr().err)


def test_register_logs_progress_off_a_terminal(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cmfnet.data.preprocess.PROGRESS_SECONDS", 0.0)
    assert run(*registration_pair(tmp_path, (4.0, -3.0, 2.0)), "--out", tmp_path / "npc") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if ", iteration " in line]
    assert len(lines) > 3 and all(line.startswith("register MR onto CT: level ") for line in lines)


@pytest.mark.skipif(not BRATS_2015.is_dir(), reason="shared/data/real/brats2015_deepmedic is absent")
def test_register_does_not_move_real_coregistered_series(run, tmp_path):
    """BraTS FLAIR and T1c are co-registered by the challenge: --register must keep them (4 mm copies,
    to stay fast)."""
    paths = []
    for name in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd", "OTMultiClass"):
        image = sitk.ReadImage(str(BRATS_2015 / "brats_2013_pat0001_1" / f"{name}.nii.gz"))
        small = sitk.Resample(image, [n // 4 for n in image.GetSize()], sitk.Transform(),
                              sitk.sitkNearestNeighbor if name == "OTMultiClass" else sitk.sitkLinear,
                              image.GetOrigin(), [4.0] * 3, image.GetDirection())
        paths.append(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(sitk.Cast(small, sitk.sitkUInt8) if name == "OTMultiClass" else small, str(paths[-1]))
    out = tmp_path / "brats"
    assert run("import", "paired", "--case", "pat0001", "--image", paths[0], "--image", paths[1],
               "--label", paths[2], "--register", "--channel-names", "FLAIR,T1c",
               "--labels", "background=0,necrosis=1,edema=2,non_enhancing=3,enhancing=4", "--out", out) == 0
    record = meta(out)["preprocessing"]["cases"]["pat0001"]["registration"]["T1c"]
    moved = np.linalg.norm(record["translation_mm_xyz"])
    assert record["applied"].startswith("identity") or moved < 1.0, record
