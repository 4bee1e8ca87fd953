"""Property-based tests: random inputs where hand-picked examples may miss a case.

Each property runs a bounded number of examples (no deadline: the 2-core CI machine is shared), so
the whole file stays under a minute. A failure prints the shrunk example to reproduce it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from medpy.metric import binary as medpy_binary
from sklearn.model_selection import KFold

from cmfnet.training.sliding_window import sliding_window_probabilities
from cmfnet.data.io import IGNORE
from cmfnet.errors import InputError
from cmfnet.evaluation.metrics import evaluate_case, image_diagonal_mm
from cmfnet.data.scribbles import simulate_autobg, simulate_scribble
from cmfnet.data.splits import check_splits, cross_validation, fixed_split, kfold_splits, synth_splits

BOUNDED = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

shapes_3d = st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 9))
spacings = st.tuples(*[st.floats(0.3, 4.0, allow_nan=False)] * 3)


@st.composite
def label_pairs(draw: st.DrawFn, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A reference and a prediction on one grid, values 0..classes-1; empty classes come up often."""
    shape = draw(shapes_3d)
    ref = draw(arrays(np.uint8, shape, elements=st.integers(0, classes - 1)))
    pred = draw(arrays(np.uint8, shape, elements=st.integers(0, classes - 1)))
    return pred, ref


# -- metrics --------------------------------------------------------------------------------------
@BOUNDED
@given(label_pairs(), spacings)
def test_metrics_agree_with_medpy_or_follow_the_empty_mask_policy(pair: tuple[np.ndarray, np.ndarray],
                                                                  spacing: tuple[float, float, float]) -> None:
    pred, ref = pair
    rows = evaluate_case(pred, ref, spacing, {1: "a", 2: "b"})
    assert [row["class_id"] for row in rows] == [1, 2]
    penalty = image_diagonal_mm(pred.shape, spacing)
    for row in rows:
        p, r = pred == row["class_id"], ref == row["class_id"]
        assert (row["tp"], row["n_pred"], row["n_ref"]) == (int((p & r).sum()), int(p.sum()), int(r.sum()))
        if p.any() and r.any():
            assert row["empty"] == "none"
            assert row["dsc"] == pytest.approx(medpy_binary.dc(p, r), abs=1e-9)
            for name, value in (("asd", medpy_binary.asd(p, r, voxelspacing=spacing)),
                                ("assd", medpy_binary.assd(p, r, voxelspacing=spacing)),
                                ("hd95", medpy_binary.hd95(p, r, voxelspacing=spacing))):
                assert row[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name
        elif p.any() or r.any():
            assert row["empty"] == ("pred" if r.any() else "ref")
            assert row["dsc"] == 0.0
            assert row["asd"] == row["assd"] == row["hd95"] == pytest.approx(penalty)
        else:
            assert row["empty"] == "both"
            assert (row["dsc"], row["asd"], row["assd"], row["hd95"]) == (1.0, 0.0, 0.0, 0.0)


# -- splits ---------------------------------------------------------------------------------------
@BOUNDED
@given(st.integers(1, 40), st.integers(2, 12), st.floats(0.0, 0.5), st.integers(0, 2**31 - 1))
def test_kfold_splits_are_disjoint_and_complete_whenever_accepted(n: int, folds: int, val_fraction: float,
                                                                 seed: int) -> None:
    cases = [f"c{i:02d}" for i in range(n)]
    too_few = folds > n or n - math.ceil(n / folds) < 2
    if too_few:
        with pytest.raises(ValueError, match="too few"):
            kfold_splits(cases, folds, val_fraction, seed)
        return
    splits = kfold_splits(cases, folds, val_fraction, seed)
    assert len(splits) == folds and check_splits(cases, splits) == []
    for split in splits:
        train, val, test = (set(split[k]) for k in ("train", "val", "test"))
        assert train and val and test
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(cases)
    assert sorted(c for split in splits for c in split["test"]) == cases  # each case tested once
    assert kfold_splits(cases, folds, val_fraction, seed) == splits  # reproducible for a seed


def test_kfold_defaults_are_the_documented_protocol() -> None:
    """docs/real-data.md: 5 folds, seed 12345 (nnU-Net's), a tenth of each fold's non-test cases
    for validation; the test parts are nnU-Net's, and so a user's nnU-Net folds are ours."""
    cases = [f"c{i:02d}" for i in range(23)]
    splits = kfold_splits(cases)
    assert splits == kfold_splits(cases, 5, 0.1, 12345)
    nnunet_tests = [sorted(cases[i] for i in test)
                    for _, test in KFold(5, shuffle=True, random_state=12345).split(cases)]
    assert [split["test"] for split in splits] == nnunet_tests
    assert [len(split["val"]) for split in splits] == [round(0.1 * (23 - len(t))) for t in nnunet_tests]
    assert all(len(set(split["val"])) == len(split["val"]) for split in splits)


def test_kfold_refuses_a_validation_fraction_that_leaves_no_training_case() -> None:
    with pytest.raises(ValueError, match="leaving none to train on"):
        kfold_splits(["a", "b", "c", "d"], folds=2, val_fraction=0.9)


@BOUNDED
@given(st.integers(0, 15), st.integers(0, 15), st.integers(0, 15), st.integers(0, 2**31 - 1))
def test_fixed_split_has_the_requested_sizes_and_covers_every_case(n_train: int, n_val: int, n_test: int,
                                                                  seed: int) -> None:
    cases = [f"c{i:02d}" for i in range(n_train + n_val + n_test)]
    (split,) = fixed_split(cases, n_train, n_val, n_test, seed)
    assert [len(split[k]) for k in ("train", "val", "test")] == [n_train, n_val, n_test]
    assert sorted(split["train"] + split["val"] + split["test"]) == cases
    with pytest.raises(ValueError, match="split sizes"):
        fixed_split(cases + ["extra"], n_train, n_val, n_test, seed)


# -- scribbles ------------------------------------------------------------------------------------
@st.composite
def label_maps(draw: st.DrawFn) -> tuple[int, np.ndarray]:
    """(num_classes, label): voxel noise, or whole slices of one class (a class may then be absent
    from every slice that gets a background stroke, which needs the fallback stroke)."""
    num_classes = draw(st.integers(2, 4))
    classes = st.integers(0, num_classes - 1)
    if draw(st.booleans()):
        shape = st.tuples(st.integers(1, 4), st.integers(3, 14), st.integers(3, 14))
        return num_classes, draw(arrays(np.uint8, shape, elements=classes))
    per_slice = draw(arrays(np.uint8, st.integers(1, 9), elements=classes))
    side = draw(st.integers(3, 10))
    return num_classes, np.ascontiguousarray(np.broadcast_to(per_slice[:, None, None], (per_slice.size, side, side)))


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_maps(), st.integers(0, 2**32 - 1), st.sampled_from([simulate_scribble, simulate_autobg]))
def test_scribbles_lie_inside_their_class_and_every_present_class_gets_one(
        labelled: tuple[int, np.ndarray], seed: int, simulate: object) -> None:
    num_classes, label = labelled
    scribble = simulate(label, num_classes, np.random.default_rng(seed))  # type: ignore[operator]
    assert scribble.shape == label.shape and scribble.dtype == np.uint8
    assert set(np.unique(scribble)) <= set(range(num_classes)) | {IGNORE}
    drawn = scribble != IGNORE
    assert np.array_equal(scribble[drawn], label[drawn]), "a scribble voxel outside its class"
    for k in np.unique(label):
        assert (scribble == k).any(), f"class {k} is present but has no scribble"


# -- sliding window -------------------------------------------------------------------------------
@BOUNDED
@given(st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(1, 24)),
       st.tuples(st.integers(1, 16), st.integers(1, 16), st.integers(1, 16)),
       st.sampled_from([1, 2, 4, 8]), st.floats(0.0, 0.9), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_sliding_window_of_a_pointwise_model_equals_whole_volume_inference(
        shape: tuple[int, int, int], patch: tuple[int, int, int], divisor: int, overlap: float,
        batch_size: int, seed: int) -> None:
    """A voxel-wise network is translation-equivariant with no border effect, so any tiling, padding
    and blending must give back its whole-volume softmax."""
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 1), torch.nn.Tanh(), torch.nn.Conv3d(4, 3, 1))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 2)
    image = torch.randn((2, *shape), generator=generator)
    with torch.no_grad():
        probs = sliding_window_probabilities(image, model, patch, num_classes=3, overlap=overlap,
                                             batch_size=batch_size, divisor=divisor)
        expected = torch.softmax(model(image[None])[0], dim=0)
    assert probs.shape == (3, *shape)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-5)


@BOUNDED
@given(st.integers(2, 24), st.integers(2, 7), st.booleans(), st.integers(0, 2**31 - 1))
def test_importer_cross_validation_keeps_patients_together_and_tests_each_case_once(
        n: int, folds: int, grouped: bool, seed: int) -> None:
    """cmfnet import's folds: with groups (ACDC's two frames of a patient) a patient is in one part;
    the folds drop to the number of patients or cases when there are fewer; the record says so."""
    cases = [f"p{i // 2:02d}_f{i % 2}" if grouped else f"c{i:02d}" for i in range(n)]
    groups = {c: c.split("_")[0] for c in cases} if grouped else None
    units = sorted({(groups or {}).get(c, c) for c in cases})
    if len(units) < 2:
        with pytest.raises(InputError, match="cross-validation needs at least 2"):
            cross_validation(cases, folds, seed, True, Path("d"), groups)
        return
    splits, protocol = cross_validation(cases, folds, seed, True, Path("d"), groups)
    assert len(splits) == protocol["folds"] == min(folds, len(units))
    assert (protocol["requested_folds"], protocol["seed"], protocol["grouped"]) == (folds, seed, grouped)
    assert protocol["val_from_train"] == any(s.get("val_from_train", False) for s in splits)
    assert sorted(c for s in splits for c in s["test"]) == sorted(cases)
    for split in splits:
        train, val, test = (set(split[k]) for k in ("train", "val", "test"))
        assert train and val and test and not (train | val) & test and train | val | test == set(cases)
        flagged = split.get("val_from_train", False)
        assert train == val if flagged else not train & val
        if groups:
            of = lambda part: {groups[c] for c in part}  # noqa: E731
            assert not of(train | val) & of(test)
            assert flagged or not of(train) & of(val)
    assert cross_validation(cases, folds, seed, True, Path("d"), groups)[0] == splits


def test_importer_cross_validation_without_val_from_train_refuses_a_one_case_fold() -> None:
    with pytest.raises(InputError, match="fold 0 keeps only .* pass --val-from-train"):
        cross_validation(["a", "b"], 2, 0, False, Path("d"))
    with pytest.raises(InputError, match="--folds 1: cross-validation needs at least 2 folds"):
        cross_validation(["a", "b", "c"], 1, 0, True, Path("d"))


@BOUNDED
@given(st.integers(3, 60))
def test_word_phantom_split_keeps_words_proportions(n: int) -> None:
    (split,) = synth_splits("word", [f"w{i:02d}" for i in range(n)])
    sizes = [len(split[k]) for k in ("train", "val", "test")]
    assert sum(sizes) == n and min(sizes) >= 1
    for size, share in zip(sizes[1:], (20 / 150, 30 / 150)):
        assert size == max(1, math.floor(n * share + 0.5))
