"""Scribble simulation: encoding, containment, non-empty classes, determinism, dataset output, CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import cmfnet.data.scribbles as scribbles
from cmfnet.errors import InputError
from cmfnet.data.io import IGNORE, Geometry, read_image, read_json, write_image, write_json
from cmfnet.data.dataset import make_dataset_json
from cmfnet.data.scribbles import (auto_background, background_slices, coverage, format_coverage, make_scribbles,
                              simulate_autobg, simulate_scribble)
from cmfnet.data.splits import fixed_split

SHAPE = (16, 64, 64)
SPACING = (3.0, 1.0, 1.0)
NUM_CLASSES = 4  # background, tumour, organ, tiny object
TINY = 3


def _ellipsoid(centre: tuple[float, float, float], radii_mm: tuple[float, float, float]) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    return sum(((axis - c) * s / r) ** 2 for axis, c, s, r
               in zip((zz, yy, xx), centre, SPACING, radii_mm)) <= 1


def make_label(shift: int = 0) -> np.ndarray:
    """An organ (2) with a tumour (1) inside it, and a 2x2 px object (3) on one slice."""
    label = np.zeros(SHAPE, np.uint8)
    label[_ellipsoid((8, 32, 30 + shift), (15, 20, 24))] = 2
    label[_ellipsoid((7, 28, 36 + shift), (9, 7, 8))] = 1
    label[8, 50:52, 10:12] = TINY
    return label


@pytest.fixture(scope="module")
def label() -> np.ndarray:
    return make_label()


@pytest.mark.parametrize("simulate", [simulate_scribble, simulate_autobg])
def test_encoding_and_containment(label: np.ndarray, simulate) -> None:
    scribble = simulate(label, NUM_CLASSES, np.random.default_rng(0))
    assert scribble.dtype == np.uint8 and scribble.shape == label.shape
    assert set(np.unique(scribble).tolist()) <= {0, 1, 2, TINY, IGNORE}
    for class_id in range(NUM_CLASSES):
        strokes = scribble == class_id
        assert strokes.any(), f"class {class_id} has no scribble"
        assert not (strokes & (label != class_id)).any(), f"class {class_id} scribble leaves its mask"
    assert (scribble == IGNORE).mean() > 0.9, "a scribble must stay sparse"


@pytest.mark.parametrize("simulate", [simulate_scribble, simulate_autobg])
def test_single_voxel_class_gets_a_scribble(simulate) -> None:
    label = np.zeros(SHAPE, np.uint8)
    label[_ellipsoid((8, 32, 32), (12, 10, 10))] = 1
    label[3, 5, 60] = 2
    scribble = simulate(label, 3, np.random.default_rng(1))
    assert scribble[3, 5, 60] == 2 and (scribble == 2).sum() == 1


def test_number_of_classes_comes_from_the_caller(label: np.ndarray) -> None:
    """A 17-class label with WORD's hard-coded 16 must fail loudly, not relabel organ 16."""
    many = label.copy()
    many[2, 2:6, 2:6] = 16
    with pytest.raises(ValueError, match="outside"):
        simulate_scribble(many, 16, np.random.default_rng(0))
    scribble = simulate_scribble(many, 17, np.random.default_rng(0))
    assert (scribble == 16).any() and not ((scribble == 16) & (many != 16)).any()


def test_deterministic_per_seed(label: np.ndarray) -> None:
    first = simulate_scribble(label, NUM_CLASSES, np.random.default_rng(7))
    again = simulate_scribble(label, NUM_CLASSES, np.random.default_rng(7))
    other = simulate_scribble(label, NUM_CLASSES, np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_autobg_differs_from_sim_only_in_background(label: np.ndarray) -> None:
    sim = simulate_scribble(label, NUM_CLASSES, np.random.default_rng(3))
    auto = simulate_autobg(label, NUM_CLASSES, np.random.default_rng(3))
    foreground = (sim != IGNORE) & (sim != 0)
    np.testing.assert_array_equal(foreground, (auto != IGNORE) & (auto != 0))
    np.testing.assert_array_equal(sim[foreground], auto[foreground])
    assert not np.array_equal(sim == 0, auto == 0)


def test_autobg_background_is_a_fixed_band_around_the_foreground(label: np.ndarray) -> None:
    margin = 4
    band = auto_background(label, margin)
    foreground_slices = (label > 0).any(axis=(1, 2))
    assert band.any(axis=(1, 2)).tolist() == foreground_slices.tolist()
    for seed in (0, 99):  # same band whatever the generator, on sim's background slices
        autobg = simulate_autobg(label, NUM_CLASSES, np.random.default_rng(seed), autobg_margin_px=margin,
                                 background_slice_margin=1, background_slice_step=3)
        slices = background_slices(label, margin=1, step=3)
        np.testing.assert_array_equal(np.flatnonzero((autobg == 0).any(axis=(1, 2))),
                                      [z for z in slices if foreground_slices[z]])
        np.testing.assert_array_equal((autobg == 0)[slices], band[slices])
    for z in np.flatnonzero(foreground_slices):
        distance = ndimage.distance_transform_cdt(label[z] == 0, metric="chessboard")[band[z]]
        assert distance.min() >= margin and distance.max() <= margin + 2
        # closed around the objects: nothing inside the band connects to the image edge
        regions, _ = ndimage.label(~band[z])
        inside = set(np.unique(regions[label[z] > 0]).tolist())
        edge = set(np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])).tolist())
        assert not inside & edge


def test_autobg_without_foreground_still_labels_background() -> None:
    band = auto_background(np.zeros(SHAPE, np.uint8), 3)
    assert band.any() and band.any(axis=(1, 2)).sum() == 1


def test_background_is_never_empty_when_its_slices_are_all_foreground() -> None:
    label = np.zeros(SHAPE, np.uint8)
    label[4:13] = 1  # the slices near the foreground hold no background at all
    for simulate in (simulate_scribble, simulate_autobg):
        scribble = simulate(label, 2, np.random.default_rng(0))
        assert (scribble == 0).any() and not ((scribble == 0) & (label != 0)).any()


def test_jitter_leaving_the_object_keeps_the_unjittered_stroke(monkeypatch, label: np.ndarray) -> None:
    monkeypatch.setattr(scribbles, "_jitter", lambda stroke, *args: np.zeros_like(stroke))
    scribble = simulate_scribble(label, NUM_CLASSES, np.random.default_rng(0), jitter_min_area=0)
    for z in np.flatnonzero((label == 2).any(axis=(1, 2))):
        assert (scribble[z] == 2).any()


def test_jitter_is_a_small_rigid_move_about_the_stroke() -> None:
    stroke = np.zeros((64, 64), bool)
    stroke[30:33, 12:52] = True
    np.testing.assert_array_equal(scribbles._jitter(stroke, np.random.default_rng(0), 0, 0.0), stroke)
    moves = []
    for seed in range(20):
        moved = scribbles._jitter(stroke, np.random.default_rng(seed), 6, 15.0)
        shift = np.argwhere(moved).mean(axis=0) - np.argwhere(stroke).mean(axis=0)
        assert np.abs(shift).max() <= 6.5 and abs(int(moved.sum()) - int(stroke.sum())) < 0.2 * stroke.sum()
        rows = np.flatnonzero(moved.any(axis=1))
        assert rows.max() - rows.min() <= 3 + 40 * np.sin(np.deg2rad(15)) + 1  # at most 15 deg tilt
        moves.append(shift.round(1).tolist())
    assert len({tuple(m) for m in moves}) > 5


def _cross(size: int = 21) -> np.ndarray:
    skeleton = np.zeros((size, size), bool)
    skeleton[size // 2, 2:-2] = True
    skeleton[2:-2, size // 2] = True
    return skeleton


def test_random_walk_is_one_path_choosing_branches_at_random() -> None:
    cross = _cross()
    paths = [scribbles._random_walk(cross, np.random.default_rng(s)) for s in range(20)]
    for path in paths:
        assert (path <= cross).all()
        assert ndimage.label(path, scribbles.EIGHT_CONNECTED)[1] == 1
        assert path.sum() < cross.sum()  # a branch was left out
        arm = cross.sum() // 4
        assert path.sum() >= 2 * arm  # from an arm's end, through the centre, to another end
    assert len({p.tobytes() for p in paths}) > 2


def test_random_walk_follows_a_staircase_to_its_end() -> None:
    """A walk that jumps a staircase corner would strand itself on the skipped pixel."""
    stairs = np.zeros((30, 30), bool)
    for i in range(14):
        stairs[i + 1, i + 1] = stairs[i + 1, i + 2] = True
    for seed in range(10):
        np.testing.assert_array_equal(scribbles._random_walk(stairs, np.random.default_rng(seed)), stairs)


@pytest.mark.parametrize("output", ["bool", "uint8_255"])
def test_skeleton_of_any_dtype_is_used(monkeypatch, label: np.ndarray, output: str) -> None:
    """scikit-image >= 0.23 returns bool; WORD's `== 255` check then yields empty scribbles."""
    real = scribbles.skeletonize

    def skeletonize(mask, method=None):
        result = np.asarray(real(mask, method=method)) > 0
        return result if output == "bool" else result.astype(np.uint8) * 255

    monkeypatch.setattr(scribbles, "skeletonize", skeletonize)
    scribble = simulate_scribble(label, NUM_CLASSES, np.random.default_rng(0))
    organ_voxels = (label == 2).sum()
    assert (scribble == 2).sum() > 0.01 * organ_voxels  # real strokes, not the fallback dot
    assert (scribble == 0).sum() > 50


def test_options_are_validated(label: np.ndarray) -> None:
    with pytest.raises(TypeError):
        simulate_scribble(label, NUM_CLASSES, np.random.default_rng(0), no_such_option=1)
    with pytest.raises(ValueError, match="erosion_range"):
        simulate_scribble(label, NUM_CLASSES, np.random.default_rng(0), erosion_range=(3, 1))


def test_background_only_near_foreground_and_every_nth_slice(label: np.ndarray) -> None:
    tumour_only = np.where(label == 1, 1, 0).astype(np.uint8)
    scribble = simulate_scribble(tumour_only, 2, np.random.default_rng(0),
                                 background_slice_margin=1, background_slice_step=2)
    occupied = np.flatnonzero(tumour_only.any(axis=(1, 2)))
    background_slices = np.flatnonzero((scribble == 0).any(axis=(1, 2)))
    assert background_slices.min() >= occupied.min() - 1 and background_slices.max() <= occupied.max() + 1
    assert (np.diff(background_slices) % 2 == 0).all()
    assert len(background_slices) < len(occupied)
    assert (occupied.min() + occupied.max()) // 2 in background_slices  # the target's middle slice


# -- dataset level -----------------------------------------------------------------------------

CASES = [f"case_{i:02d}" for i in range(5)]
LABELS = {"background": 0, "tumour": 1, "organ": 2, "tiny": TINY}


def _write_dataset(root: Path) -> Path:
    geometry = Geometry(SHAPE, SPACING, (10.0, -5.0, 2.0), tuple(np.eye(3).ravel().tolist()))
    rng = np.random.default_rng(0)
    for i, case in enumerate(CASES):
        label = make_label(shift=i - 2)
        for channel in range(2):
            image = (label * 40 + rng.normal(0, 5, SHAPE)).astype(np.float32)
            write_image(image, root / "imagesTr" / f"{case}_{channel:04d}.nii.gz", geometry)
        write_image(label, root / "labelsTr" / f"{case}.nii.gz", geometry)
    splits = fixed_split(CASES, n_train=3, n_val=1, n_test=1, seed=0)
    write_json(make_dataset_json("scribble-test", ["CT", "MR"], LABELS, CASES, SPACING, splits),
               root / "dataset.json")
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "ds")


def _train_cases(root: Path) -> list[str]:
    return read_json(root / "dataset.json")["splits"][0]["train"]


def test_make_scribbles_writes_training_cases_only(dataset: Path, capsys) -> None:
    report = make_scribbles(dataset, "sim", seed=5)
    folder = dataset / "scribblesTr" / "sim"
    train = _train_cases(dataset)
    assert sorted(p.name for p in folder.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in train)
    assert sorted(report["cases"]) == sorted(train)
    assert [p.name for p in dataset.joinpath("scribblesTr").iterdir()] == ["sim"]  # no temp folders
    _, image_geometry = read_image(dataset / "imagesTr" / f"{train[0]}_0000.nii.gz")
    scribble, geometry = read_image(folder / f"{train[0]}.nii.gz")
    assert geometry.same_grid(image_geometry) and scribble.dtype == np.uint8
    table = capsys.readouterr().out
    assert all(name in table for name in LABELS)


def test_coverage_json_matches_the_files(dataset: Path) -> None:
    make_scribbles(dataset, "autobg", seed=2, autobg_margin_px=3)
    folder = dataset / "scribblesTr" / "autobg"
    saved = read_json(folder / "coverage.json")
    assert saved["variant"] == "autobg" and saved["seed"] == 2
    assert saved["options"]["autobg_margin_px"] == 3 and saved["options"]["erosion_range"] == [1, 8]
    assert saved["classes"] == {str(v): k for k, v in LABELS.items()}
    for case, per_class in saved["cases"].items():
        scribble, _ = read_image(folder / f"{case}.nii.gz")
        for name, class_id in LABELS.items():
            assert per_class[name] == pytest.approx(100 * (scribble == class_id).mean())
            assert per_class[name] > 0
    for name in LABELS:
        assert saved["mean"][name] == pytest.approx(np.mean([c[name] for c in saved["cases"].values()]))


def test_make_scribbles_is_deterministic_per_seed(dataset: Path) -> None:
    case = _train_cases(dataset)[0]
    path = dataset / "scribblesTr" / "sim" / f"{case}.nii.gz"
    make_scribbles(dataset, "sim", seed=1)
    first = read_image(path)[0]
    make_scribbles(dataset, "sim", seed=1)
    np.testing.assert_array_equal(read_image(path)[0], first)
    make_scribbles(dataset, "sim", seed=2)
    assert not np.array_equal(read_image(path)[0], first)


def test_case_rng_depends_on_seed_and_case_only() -> None:
    draw = lambda seed, case: scribbles.case_rng(seed, case).integers(1 << 30, size=4).tolist()  # noqa: E731
    assert draw(0, "a") == draw(0, "a")
    assert draw(0, "a") != draw(0, "b") and draw(0, "a") != draw(1, "a")


def test_missing_label_is_an_input_error_and_nothing_is_written(dataset: Path) -> None:
    missing = dataset / "labelsTr" / f"{_train_cases(dataset)[-1]}.nii.gz"
    missing.unlink()
    with pytest.raises(InputError, match=missing.name):
        make_scribbles(dataset, "sim")
    assert not any((dataset / "scribblesTr").iterdir())


def test_missing_label_keeps_a_previous_variant_folder(dataset: Path) -> None:
    make_scribbles(dataset, "sim")
    before = sorted(p.name for p in (dataset / "scribblesTr" / "sim").iterdir())
    (dataset / "labelsTr" / f"{_train_cases(dataset)[0]}.nii.gz").unlink()
    with pytest.raises(InputError):
        make_scribbles(dataset, "sim", seed=4)
    assert sorted(p.name for p in (dataset / "scribblesTr" / "sim").iterdir()) == before


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    scribbles.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_command_line(dataset: Path, capsys) -> None:
    args = _parse(["scribble", "--dataset", str(dataset), "--variant", "autobg", "--seed", "3"])
    assert args.func(args) == 0
    assert read_json(dataset / "scribblesTr" / "autobg" / "coverage.json")["seed"] == 3
    assert "autobg" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _parse(["scribble", "--dataset", str(dataset), "--variant", "manual"])


def test_cli_main_reports_missing_label(dataset: Path, capsys) -> None:
    from cmfnet.cli import main
    missing = dataset / "labelsTr" / f"{_train_cases(dataset)[0]}.nii.gz"
    missing.unlink()
    assert main(["scribble", "--dataset", str(dataset), "--variant", "sim"]) == 2
    assert missing.name in capsys.readouterr().err


def test_coverage_counts_percent_of_voxels() -> None:
    scribble = np.full((2, 10, 10), IGNORE, np.uint8)
    scribble[0, 0, :4] = 0
    scribble[1, 5, 5] = 1
    assert coverage(scribble, {0: "background", 1: "tumour"}) == {"background": 2.0, "tumour": 0.5}


NPC_PAPER_COVERAGE = {"tumour": 0.04, "background": 0.08, "autobg": 0.06}  # % (paper, Sec. IV.A.3)


def test_default_coverage_on_npc_phantoms_matches_the_paper_in_order_of_magnitude(tmp_path: Path) -> None:
    from cmfnet.data.synth import synthesize
    root = synthesize("npc", 6, tmp_path / "npc", seed=0)
    sim = make_scribbles(root, "sim")["mean"]
    autobg = make_scribbles(root, "autobg")["mean"]
    measured = {"tumour": sim["tumour"], "background": sim["background"], "autobg": autobg["background"]}
    for name, paper in NPC_PAPER_COVERAGE.items():
        assert 0.1 * paper <= measured[name] <= 10 * paper, f"{name}: {measured[name]:.4f} % vs paper {paper} %"
    assert autobg["tumour"] == sim["tumour"]


def test_rerun_removes_the_partial_folder_a_killed_run_left(dataset: Path, capsys) -> None:
    leftover = dataset / "scribblesTr" / ".sim.k1ll3d_x.part"
    leftover.mkdir(parents=True)
    (leftover / "half.nii.gz").write_bytes(b"\x1f\x8b")
    make_scribbles(dataset, "sim")
    assert f"note: removed {leftover}, left by a killed earlier write" in capsys.readouterr().err
    assert [p.name for p in (dataset / "scribblesTr").iterdir()] == ["sim"]


def test_one_training_case_is_singular() -> None:
    report = {"variant": "sim", "seed": 0, "classes": {"0": "background"}, "cases": {"a": {"background": 1.0}},
              "mean": {"background": 1.0}}
    assert "1 training case (% of image voxels)" in format_coverage(report)


# -- exact values (mutation run of 2026-12-04) ---------------------------------------------------

@pytest.mark.parametrize("occupied, margin, step, expected", [
    ((5, 9), 1, 2, [5, 7, 9]),         # anchor 7: every second slice from 4 to 10 that meets it
    ((5, 9), 2, 3, [4, 7, 10]),        # anchor 7, slices 3..11
    ((0, 3), 2, 1, [0, 1, 2, 3, 4, 5]),  # clipped at the first slice
    ((10, 11), 3, 2, [8, 10]),         # clipped at the last slice (11), anchor 10
    ((6, 6), 0, 4, [6]),
])
def test_background_slices_exactly(occupied: tuple[int, int], margin: int, step: int, expected: list[int]) -> None:
    label = np.zeros((12, 4, 4), np.uint8)
    label[occupied[0]:occupied[1] + 1, 1, 1] = 1
    assert background_slices(label, margin, step) == expected


def test_background_slice_of_an_empty_volume_is_its_middle() -> None:
    assert background_slices(np.zeros((9, 4, 4), np.uint8), 1, 2) == [4]


def test_make_scribbles_draws_with_the_options_it_records(dataset: Path) -> None:
    report = make_scribbles(dataset, "sim", seed=2, dilation_iterations=3, background_slice_step=1)
    assert report["options"]["dilation_iterations"] == 3 and report["unit"] == "percent of image voxels"
    case = _train_cases(dataset)[0]
    written, _ = read_image(dataset / "scribblesTr" / "sim" / f"{case}.nii.gz")
    label, _ = read_image(dataset / "labelsTr" / f"{case}.nii.gz")
    expected = simulate_scribble(label, len(LABELS), scribbles.case_rng(2, case), dilation_iterations=3,
                                 background_slice_step=1)
    assert np.array_equal(written, expected)
    assert not np.array_equal(written, simulate_scribble(label, len(LABELS), scribbles.case_rng(2, case)))


def test_scribble_errors_name_what_is_wrong(dataset: Path, label: np.ndarray) -> None:
    with pytest.raises(ValueError) as err:
        make_scribbles(dataset, "manual")
    assert str(err.value) == "unknown scribble variant 'manual' (known: autobg, scribblebench, sim)"
    with pytest.raises(ValueError) as err:
        simulate_scribble(label, NUM_CLASSES - 1, np.random.default_rng(0))
    assert str(err.value) == f"label values 0..{TINY} outside 0..{NUM_CLASSES - 2}"
    with pytest.raises(ValueError) as err:
        simulate_scribble(label[0], NUM_CLASSES, np.random.default_rng(0))
    assert str(err.value) == "expected a (z, y, x) label volume, got shape (64, 64)"
    with pytest.raises(ValueError) as err:
        auto_background(label, margin_px=0)
    assert str(err.value) == "margin_px must be >= 1, got 0"
    assert auto_background(label, margin_px=1).any()

    meta = read_json(dataset / "dataset.json")
    for split in meta["splits"]:
        split["train"] = []
    write_json(meta, dataset / "dataset.json")
    with pytest.raises(InputError) as err:
        make_scribbles(dataset, "sim")
    assert (err.value.path, err.value.problem) == (str(dataset / "dataset.json"),
                                                   "no case is in any fold's training list")


def test_coverage_table_has_a_header_and_one_line_per_class() -> None:
    report = {"variant": "sim", "seed": 1, "classes": {"0": "background", "1": "tumour"},
              "cases": {"a": {"background": 0.5, "tumour": 0.25}, "b": {"background": 1.5, "tumour": 0.75}},
              "mean": {"background": 1.0, "tumour": 0.5}}
    assert format_coverage(report).splitlines() == [
        "scribble coverage, variant sim, seed 1, 2 training cases (% of image voxels)",
        "class           mean       min       max",
        "background    1.0000    0.5000    1.5000",
        "tumour        0.5000    0.2500    0.7500"]
