"""Split rules the property tests leave open: seeds, the protocol records, the error texts, and the
grouped validation draw (mutmut survivors of splits.py, issue 16).

Expected values come from the documented protocol (docs/real-data.md: nnU-Net's KFold with the
given seed, 10 % of the non-test part for validation, at least one) or are counted by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.model_selection import KFold

from cmfnet.errors import InputError
from cmfnet.data.splits import cross_validation, fixed_split, given_test_parts, synth_splits

SOURCE = Path("data/src")


def test_fixed_split_is_reproducible_and_its_default_seed_is_nnunets() -> None:
    cases = [f"c{i:02d}" for i in range(20)]
    split = fixed_split(cases, 14, 3, 3)
    assert split == fixed_split(cases, 14, 3, 3) == fixed_split(cases, 14, 3, 3, seed=12345)
    assert split != fixed_split(cases, 14, 3, 3, seed=1)


def test_cross_validation_uses_the_given_seed_for_nnunets_test_folds() -> None:
    """Ungrouped: the test parts are sklearn's KFold(shuffle, random_state=seed) on the sorted
    cases, for the seed asked for (not the default 12345)."""
    cases = [f"c{i:02d}" for i in range(12)]
    splits, protocol = cross_validation(cases, 3, 7, False, SOURCE)
    expected = [sorted(cases[i] for i in test) for _, test in KFold(3, shuffle=True, random_state=7).split(cases)]
    assert [s["test"] for s in splits] == expected
    assert protocol == {"kind": "kfold", "folds": 3, "requested_folds": 3, "seed": 7, "val_fraction": 0.1,
                        "grouped": False, "val_from_train": False}


def test_three_cases_in_two_folds_need_val_from_train_for_the_fold_left_with_one_case() -> None:
    """KFold(2) of 3 cases tests 2 in one fold, leaving 1 case to train on: that fold is refused,
    or with val_from_train trains and validates on its one case."""
    cases = ["a", "b", "c"]
    splits, protocol = cross_validation(cases, 2, 0, True, SOURCE)
    short = [s for s in splits if len(s["test"]) == 2]
    assert len(short) == 1 and short[0]["train"] == short[0]["val"] and short[0]["val_from_train"] is True
    assert protocol["val_from_train"] is True
    (rest,) = short[0]["train"]
    with pytest.raises(InputError) as err:
        cross_validation(cases, 2, 0, False, SOURCE)
    assert str(err.value) == (f"{SOURCE}: fold {splits.index(short[0])} keeps only ['{rest}'] besides its test "
                              "cases: too few for disjoint train and val; pass --val-from-train to validate "
                              "on the training case, or give more cases or folds")


def test_grouped_validation_takes_a_tenth_of_the_patients_without_repeats() -> None:
    """100 patients (2 frames each) in 2 folds: 50 patients outside each test part, so 10 % is 5
    validation patients (10 frames), all different, for every seed (a draw with replacement
    repeats a patient within these seeds)."""
    cases = [f"p{i // 2:03d}_f{i % 2}" for i in range(200)]
    groups = {c: c.split("_")[0] for c in cases}
    for seed in range(10):
        splits, protocol = cross_validation(cases, 2, seed, False, SOURCE, groups)
        assert protocol["grouped"] is True and protocol["folds"] == 2
        for split in splits:
            assert len({groups[c] for c in split["val"]}) == 5 and len(split["val"]) == 10, seed


@pytest.mark.parametrize("cases, groups, folds, message", [
    (["a", "b", "c"], None, 1, "--folds 1: cross-validation needs at least 2 folds"),
    (["a"], None, 2, "1 case: cross-validation needs at least 2 cases"),
    (["p1_f0", "p1_f1"], {"p1_f0": "p1", "p1_f1": "p1"}, 2, "2 cases: cross-validation needs at least 2 patients"),
])
def test_cross_validation_errors_name_the_source_and_what_is_missing(cases: list[str], groups: dict[str, str] | None,
                                                                     folds: int, message: str) -> None:
    with pytest.raises(InputError) as err:
        cross_validation(cases, folds, 0, True, SOURCE, groups)
    assert str(err.value) == f"{SOURCE}: {message}"


def test_given_test_parts_keep_the_data_s_folds_and_record_where_they_come_from() -> None:
    cases = [f"c{i:02d}" for i in range(30)]
    parts = [cases[0::3], cases[1::3], cases[2::3]]
    splits, protocol = given_test_parts(parts, list(reversed(cases)), 3, False, SOURCE, "splits_final.json")
    assert protocol == {"kind": "kfold", "folds": 3, "source": "splits_final.json", "seed": 3,
                        "val_fraction": 0.1, "val_from_train": False}
    assert [s["test"] for s in splits] == parts
    for split, test in zip(splits, parts):
        assert len(split["val"]) == 2  # round(0.1 * 20)
        assert sorted(split["train"] + split["val"]) == [c for c in cases if c not in test]
    again, _ = given_test_parts(parts, cases, 3, False, SOURCE, "splits_final.json")
    assert again == splits  # the validation draw follows the seed


def test_given_test_parts_of_two_single_cases_need_val_from_train_and_say_so() -> None:
    splits, protocol = given_test_parts([["a"], ["b"]], ["a", "b"], 0, True, SOURCE, "x")
    assert splits == [{"train": ["b"], "val": ["b"], "test": ["a"], "val_from_train": True},
                      {"train": ["a"], "val": ["a"], "test": ["b"], "val_from_train": True}]
    assert protocol["val_from_train"] is True
    with pytest.raises(InputError, match="^data/src: fold 0 keeps only \\['b'\\]"):
        given_test_parts([["a"], ["b"]], ["a", "b"], 0, False, SOURCE, "x")


def test_a_test_part_holding_every_case_is_refused_naming_the_fold() -> None:
    with pytest.raises(InputError) as err:
        given_test_parts([["a"], ["a", "b"]], ["a", "b"], 0, True, SOURCE, "x")
    assert str(err.value) == f"{SOURCE}: fold 1 has no training case"


def test_synth_npc_defaults_to_five_folds_and_accepts_two() -> None:
    cases = [f"n{i:02d}" for i in range(12)]
    assert len(synth_splits("npc", cases)) == 5
    assert len(synth_splits("npc", cases, folds=2)) == 2


@pytest.mark.parametrize("kind, n, folds, message", [
    ("word", 2, 5, "--cases: word needs at least 3 cases (train/val/test), got 2"),
    ("npc", 6, 1, "--folds: cross-validation needs at least 2 folds, got 1"),
    ("npc", 5, 5, "--cases: 5-fold cross-validation with validation cases needs at least 6 cases, got 5"),
])
def test_synth_splits_refuse_too_few_cases_or_folds_naming_the_option(kind: str, n: int, folds: int,
                                                                      message: str) -> None:
    with pytest.raises(InputError) as err:
        synth_splits(kind, [f"c{i}" for i in range(n)], folds)
    assert str(err.value) == message


def test_synth_npc_three_cases_in_two_folds_is_a_user_error() -> None:
    """kfold_splits refuses it; synth_splits must say so as a --cases error, not a traceback."""
    with pytest.raises(InputError, match="^--cases: "):
        synth_splits("npc", ["a", "b", "c"], folds=2)
