"""The embedded synthetic datasets: format, determinism, splits and the imaging properties that
make them stand-ins for NPC (complementary CT/MR) and WORD (abdominal organs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cmfnet.data import phantoms, synth
from cmfnet.cli import main
from cmfnet.errors import InputError
from cmfnet.data.dataset import Dataset
from cmfnet.data.splits import check_splits, synth_splits

NPC_SHAPE = (12, 48, 48)
WORD_SHAPE = (16, 48, 48)
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def npc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.synthesize("npc", 5, tmp_path_factory.mktemp("npc") / "ds", seed=1,
                            shape=NPC_SHAPE, folds=3)


@pytest.fixture(scope="module")
def word_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.synthesize("word", 6, tmp_path_factory.mktemp("word") / "ds", seed=1, shape=WORD_SHAPE)


# -- determinism ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(phantoms.KINDS))
def test_case_generators_are_deterministic_per_seed_and_differ_across_seeds(kind: str) -> None:
    spec = phantoms.KINDS[kind]
    shape = NPC_SHAPE if kind == "npc" else WORD_SHAPE
    spacing = phantoms.spacing_for(kind, shape)
    first = spec.generator(phantoms.case_rng(kind, 7, 0), shape, spacing)
    again = spec.generator(phantoms.case_rng(kind, 7, 0), shape, spacing)
    other_seed = spec.generator(phantoms.case_rng(kind, 8, 0), shape, spacing)
    other_case = spec.generator(phantoms.case_rng(kind, 7, 1), shape, spacing)
    assert set(first) == {*spec.channels, "label"}
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    for key in spec.channels:
        assert not np.array_equal(first[key], other_seed[key])
        assert not np.array_equal(first[key], other_case[key])


def test_same_seed_gives_identical_files_and_more_cases_keep_the_first(npc_root: Path,
                                                                       tmp_path: Path) -> None:
    again = synth.synthesize("npc", 5, tmp_path / "again", seed=1, shape=NPC_SHAPE, folds=3)
    assert _digests(again) == _digests(npc_root)
    longer = synth.synthesize("npc", 6, tmp_path / "longer", seed=1, shape=NPC_SHAPE, folds=3)
    images = {k: v for k, v in _digests(npc_root).items() if k.endswith(".nii.gz")}
    longer_digests = _digests(longer)
    assert all(longer_digests[k] == v for k, v in images.items())
    other = synth.synthesize("npc", 5, tmp_path / "other", seed=2, shape=NPC_SHAPE, folds=3)
    assert _digests(other)["imagesTr/npc_000_0001.nii.gz"] != images["imagesTr/npc_000_0001.nii.gz"]


# -- format --------------------------------------------------------------------------------
def test_npc_dataset_loads_with_declared_normalization_and_provenance(npc_root: Path) -> None:
    dataset = Dataset(npc_root)
    assert dataset.channels == ["CT", "MR"]
    assert dataset.labels == {"background": 0, "tumour": 1}
    assert dataset.cases == [f"npc_{i:03d}" for i in range(5)]
    assert check_splits(dataset.cases, dataset.splits) == []
    assert len(dataset.splits) == 3 and all(split["val"] for split in dataset.splits)
    meta = dataset.meta
    assert meta["normalization"]["CT"]["scheme"] == "ct"
    assert meta["normalization"]["MR"] == {"scheme": "zscore", "clip_percentiles": [0.5, 99.5], "mask": "body"}
    assert meta["provenance"]["generator"] == "cmfnet synth"
    assert meta["provenance"]["kind"] == "npc" and meta["provenance"]["seed"] == 1
    assert meta["provenance"]["shape"] == list(NPC_SHAPE) and "cmfnet_version" in meta["provenance"]
    spacing = phantoms.spacing_for("npc", NPC_SHAPE)
    assert meta["spacing"] == pytest.approx(spacing)
    for case in dataset.cases:
        image, geometry = dataset.load_image(case)  # checks both channels share one grid
        label = dataset.load_label(case)            # checks values within the classes
        assert image.shape == (2, *NPC_SHAPE)
        assert geometry.spacing == pytest.approx(spacing)
        assert label.any()
        ct, mr = image
        assert ct.min() >= -1024 and ct.max() > 500  # HU: air and bone
        assert mr.min() >= 0


def test_default_npc_spacing_is_the_papers() -> None:
    assert phantoms.spacing_for("npc", phantoms.NPC_DEFAULT_SHAPE) == pytest.approx((3.0, 1.27, 1.27))


def test_word_dataset_loads_with_one_channel_and_seven_organs(word_root: Path) -> None:
    dataset = Dataset(word_root)
    assert dataset.channels == ["CT"]
    assert dataset.labels == phantoms.WORD_LABELS and dataset.num_classes == 8
    assert "MR" not in dataset.meta["normalization"]
    assert check_splits(dataset.cases, dataset.splits) == []
    assert [len(dataset.splits[0][p]) for p in ("train", "val", "test")] == [4, 1, 1]
    for case in dataset.cases:
        image, _ = dataset.load_image(case)
        assert image.shape == (1, *WORD_SHAPE)
        assert set(np.unique(dataset.load_label(case))) == set(range(8))


@pytest.mark.parametrize("n_cases", [3, 4, 7, 10, 20, 33, 75, 150, 151, 300])
def test_word_split_keeps_the_100_20_30_proportions(n_cases: int) -> None:
    cases = [f"word_{i:03d}" for i in range(n_cases)]
    split = synth_splits("word", cases)
    sizes = [len(split[0][p]) for p in ("train", "val", "test")]
    assert len(split) == 1 and check_splits(cases, split) == []
    assert sum(sizes) == n_cases and min(sizes) >= 1
    if n_cases == 150:
        assert sizes == [100, 20, 30]
    for size, share in zip(sizes, (100 / 150, 20 / 150, 30 / 150)):
        assert abs(size - share * n_cases) <= 1.0


def test_npc_splits_are_cross_validation() -> None:
    cases = [f"npc_{i:03d}" for i in range(20)]
    splits = synth_splits("npc", cases, folds=5)
    assert len(splits) == 5 and check_splits(cases, splits) == []


def test_a_failed_generation_leaves_nothing_behind(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(rng: np.random.Generator, shape: tuple, spacing: tuple) -> dict:
        raise RuntimeError("generator crashed")

    monkeypatch.setitem(phantoms.KINDS, "npc", dataclasses.replace(phantoms.KINDS["npc"], generator=broken))
    with pytest.raises(RuntimeError):
        synth.synthesize("npc", 6, tmp_path / "ds", shape=NPC_SHAPE)
    assert list(tmp_path.iterdir()) == []


# -- NPC imaging properties ------------------------------------------------------------------
def _tumour_cnr(case: dict[str, np.ndarray]) -> tuple[float, float]:
    """Tumour vs the soft tissue ring around it (2-3 voxels out, CT within soft-tissue HU)."""
    tumour = case["label"].astype(bool)
    core = ndimage.binary_erosion(tumour, IN_PLANE)
    core = core if core.sum() >= 5 else tumour
    ring = (ndimage.binary_dilation(tumour, IN_PLANE, iterations=3)
            & ~ndimage.binary_dilation(tumour, IN_PLANE, iterations=1)
            & (case["CT"] > -30) & (case["CT"] < 200))
    cnr = []
    for channel in ("CT", "MR"):
        image = case[channel].astype(np.float64)
        cnr.append(abs(image[core].mean() - image[ring].mean()) / image[ring].std())
    return cnr[0], cnr[1]


@pytest.fixture(scope="module")
def npc_cases() -> tuple[tuple[int, int, int], list[dict[str, np.ndarray]]]:
    shape = (16, 64, 64)
    spacing = phantoms.spacing_for("npc", shape)
    return shape, [phantoms.npc_case(phantoms.case_rng("npc", 0, i), shape, spacing) for i in range(12)]


def test_tumour_shows_on_ct_and_more_clearly_on_mr(npc_cases) -> None:
    """Protocol 7: CT shows the tumour (15-30 HU above muscle, CNR about 1.5; it was about 0.5
    at 3-12 HU), MR shows it about three times as clearly."""
    _, cases = npc_cases
    ct_cnr, mr_cnr = np.array([_tumour_cnr(case) for case in cases]).T
    assert 1.0 < np.median(ct_cnr) < 2.5
    assert np.median(mr_cnr) > 2.0
    assert np.median(mr_cnr) > 2 * np.median(ct_cnr)
    assert (mr_cnr > ct_cnr).mean() >= 0.9


def test_tumour_sizes_vary_and_include_small_ones(npc_cases) -> None:
    shape, cases = npc_cases
    voxel_ml = float(np.prod(phantoms.spacing_for("npc", shape))) / 1000
    volumes = np.array([case["label"].sum() * voxel_ml for case in cases])
    assert volumes.min() > 0
    assert volumes.max() / volumes.min() > 4
    assert volumes.min() < 30.0  # ml: an early-stage (T1-T2) primary; below ~7 ml no method scores on the grid


def test_tumour_sits_at_the_airway_wall_and_spares_bone(npc_cases) -> None:
    shape, cases = npc_cases
    spacing = phantoms.spacing_for("npc", shape)
    for case in cases:
        air = case["CT"] < -500
        components, _ = ndimage.label(air)
        border = np.unique(np.concatenate([components[:, [0, -1], :].ravel(),
                                           components[:, :, [0, -1]].ravel()]))
        airway = air & ~np.isin(components, border[border > 0])
        distance = ndimage.distance_transform_edt(~airway, sampling=spacing)
        tumour = case["label"].astype(bool)
        assert distance[tumour].min() < 10.0
        assert np.median(case["CT"][tumour]) < 200


def test_mr_has_tumour_like_confounders_outside_the_tumour(npc_cases) -> None:
    """Bright MR is not a tumour detector: as much MR-bright tissue lies outside the tumour."""
    _, cases = npc_cases
    for case in cases:
        tumour = case["label"].astype(bool)
        mr = case["MR"].astype(np.float64)
        bright = mr > np.median(mr[tumour])
        assert (bright & ~tumour).sum() > (bright & tumour).sum()


# -- WORD imaging properties -----------------------------------------------------------------
@pytest.fixture(scope="module")
def word_cases() -> tuple[tuple[int, int, int], list[dict[str, np.ndarray]]]:
    shape = (20, 64, 64)
    spacing = phantoms.spacing_for("word", shape)
    return shape, [phantoms.word_case(phantoms.case_rng("word", 0, i), shape, spacing) for i in range(4)]


def test_word_organs_have_the_clinical_hu_order(word_cases) -> None:
    _, cases = word_cases
    labels = phantoms.WORD_LABELS
    for case in cases:
        ct, label = case["CT"].astype(np.float64), case["label"]
        hu = {name: np.median(ct[label == value]) for name, value in labels.items() if value}
        kidney = np.median(ct[np.isin(label, [labels["kidney_left"], labels["kidney_right"]])])
        body_background = ct[(label == 0) & (ct > -300) & (ct < 300)]
        fat = np.median(body_background[body_background < -50])
        assert kidney > hu["liver"] > hu["spleen"] > hu["gallbladder"] > fat
        assert hu["liver"] > hu["pancreas"] > hu["gallbladder"]
        assert ((body_background > -150) & (body_background < -50)).mean() > 0.1  # fat is common


def test_word_anatomy_positions_and_sizes(word_cases) -> None:
    shape, cases = word_cases
    labels = phantoms.WORD_LABELS
    for case in cases:
        label = case["label"]
        centre = {name: ndimage.center_of_mass(label == value) for name, value in labels.items() if value}
        size = {name: int((label == value).sum()) for name, value in labels.items() if value}
        # x index grows towards the patient's left (LPS), y towards posterior
        assert centre["liver"][2] < shape[2] / 2 < centre["spleen"][2]
        assert centre["kidney_right"][2] < centre["kidney_left"][2]
        assert centre["kidney_right"][0] < centre["kidney_left"][0]  # the right kidney sits lower
        assert centre["spleen"][1] > centre["stomach"][1]
        assert centre["gallbladder"][0] < centre["liver"][0]  # under the liver
        assert size["liver"] == max(size.values())
        assert size["gallbladder"] < 0.1 * size["liver"] and size["pancreas"] < 0.1 * size["liver"]
    stomach_has_gas = [bool((case["CT"][case["label"] == labels["stomach"]] < -500).any())
                       for case in cases]
    assert any(stomach_has_gas)


# -- CLI and bad input -----------------------------------------------------------------------
def test_cli_writes_a_dataset_and_prints_one_summary_line(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    code = main(["synth", "--kind", "npc", "--cases", "4", "--folds", "3", "--shape", "8", "32", "32",
                 "--seed", "5", "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert "4 cases" in lines[0] and "CT, MR" in lines[0] and "tumour" in lines[0]
    assert "8 x 32 x 32" in lines[0]
    assert json.loads((out / "dataset.json").read_text())["provenance"]["seed"] == 5


@pytest.mark.parametrize("argv, fragment", [
    (["--kind", "npc", "--cases", "3"], "at least 6 cases"),
    (["--kind", "npc", "--cases", "6", "--folds", "1"], "at least 2 folds"),
    (["--kind", "word", "--cases", "2"], "at least 3 cases"),
    (["--kind", "word", "--cases", "6", "--folds", "3"], "--folds applies to npc only"),
    (["--kind", "npc", "--cases", "6", "--shape", "4", "32", "32"], "--shape"),
])
def test_cli_rejects_bad_arguments_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  argv: list[str], fragment: str) -> None:
    code = main(["synth", *argv, "--out", str(tmp_path / "ds")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ds").exists()


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="refusing to replace"):
        synth.synthesize("npc", 6, precious, shape=NPC_SHAPE)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_regenerating_replaces_an_earlier_synthetic_dataset(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    synth.synthesize("npc", 6, target, seed=3, shape=NPC_SHAPE, folds=3)
    synth.synthesize("npc", 4, target, seed=3, shape=NPC_SHAPE, folds=3)
    assert Dataset(target).cases == [f"npc_{i:03d}" for i in range(4)]
    assert not (target / "imagesTr" / "npc_005_0000.nii.gz").exists()


def test_unknown_kind_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown synthetic dataset"):
        synth.synthesize("brats", 6, tmp_path / "ds")


def test_rerun_after_snakemake_deleted_dataset_json(tmp_path: Path) -> None:
    """Snakemake deletes a rule's declared output (dataset.json) before re-running it."""
    out = synth.synthesize("npc", 6, tmp_path / "ds", seed=0, shape=(16, 32, 32), folds=3)
    (out / "dataset.json").unlink()
    synth.synthesize("npc", 6, out, seed=1, shape=(16, 32, 32), folds=3)
    assert json.loads((out / "dataset.json").read_text())["provenance"]["seed"] == 1


def test_rerun_removes_the_partial_folder_a_killed_run_left(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    leftover = tmp_path / ".ds.k1ll3d_x.part"
    leftover.mkdir()
    (leftover / "imagesTr").mkdir()
    other = tmp_path / ".ds2.k1ll3d_x.part"  # another dataset's write: not ours to remove
    other.mkdir()
    synth.synthesize("npc", 6, tmp_path / "ds", seed=0, shape=(16, 32, 32), folds=3)
    assert f"note: removed {leftover}, left by a killed earlier write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "ds"]
