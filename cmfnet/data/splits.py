"""Train/validation/test splits: every split the suite makes, and the check they all pass.

Each fold is ``{"train": [...], "val": [...], "test": [...]}``. Validation cases are held out of
training for model selection; test cases are touched only by prediction and evaluation.

Who makes which splits: ``cmfnet synth`` its kind's protocol (:func:`synth_splits`); the importers
the data's own split when it defines one (WORD's folders; nnU-Net's ``splits_final.json`` through
:func:`given_test_parts`), otherwise :func:`cross_validation`. With few cases the number of
folds drops to the number of cases (leave-one-out); a fold whose non-test part is a single case
(any 2-case dataset) cannot have disjoint train and validation cases, so it is refused unless
``val_from_train`` is asked for, in which case that case is both train and val and the fold says so
(``"val_from_train": true``); ``cmfnet validate`` accepts exactly that and nothing looser.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

from cmfnet.errors import InputError
from cmfnet.data.io import counted
from cmfnet.data.phantoms import kind_spec

VAL_FRACTION = 0.1
DEFAULT_SEED = 12345  # nnU-Net's KFold seed
VAL_FROM_TRAIN = "val_from_train"  # the fold flag: its single training case is also its validation case
WORD_PROPORTIONS = (100, 20, 30)  # train / val / test, WORD's official split


def kfold_splits(cases: list[str], folds: int = 5, val_fraction: float = VAL_FRACTION,
                 seed: int = DEFAULT_SEED) -> list[dict[str, list[str]]]:
    """K-fold cross-validation (NPC protocol); each fold's training part gives up a validation set.

    The fold assignment follows nnU-Net's ``KFold(shuffle=True, random_state=seed)`` so that a
    user's nnU-Net splits and ours agree for the same seed.
    """
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    largest_test = math.ceil(len(cases) / folds)
    if folds > len(cases) or len(cases) - largest_test < 2:
        raise ValueError(f"{len(cases)} cases are too few for {folds}-fold cross-validation: every fold "
                         f"needs a test case, a training case and a validation case")
    ordered = sorted(cases)
    rng = np.random.default_rng(seed)
    out = []
    for train_idx, test_idx in KFold(folds, shuffle=True, random_state=seed).split(ordered):
        rest = [ordered[i] for i in train_idx]
        n_val = max(1, int(round(val_fraction * len(rest))))
        if n_val >= len(rest):
            raise ValueError(f"val_fraction {val_fraction} takes all {len(rest)} non-test cases of a fold "
                             f"for validation, leaving none to train on")
        val = sorted(rng.choice(rest, size=n_val, replace=False).tolist())
        train = [c for c in rest if c not in val]
        out.append({"train": train, "val": val, "test": sorted(ordered[i] for i in test_idx)})
    return out


def fixed_split(cases: list[str], n_train: int, n_val: int, n_test: int,
                seed: int = DEFAULT_SEED) -> list[dict[str, list[str]]]:
    """One fixed train/val/test split (WORD protocol: 100/20/30)."""
    if n_train + n_val + n_test != len(cases):
        raise ValueError(f"split sizes {n_train}+{n_val}+{n_test} != {len(cases)} cases")
    order = np.random.default_rng(seed).permutation(sorted(cases)).tolist()
    return [{"train": sorted(order[:n_train]), "val": sorted(order[n_train:n_train + n_val]),
             "test": sorted(order[n_train + n_val:])}]


def check_splits(cases: list[str], splits: list[dict[str, list[str]]]) -> list[str]:
    """Problems with a split definition, as messages (empty when sound)."""
    problems = []
    known = set(cases)
    tested: list[str] = []
    for k, split in enumerate(splits):
        parts = {name: set(split.get(name, [])) for name in ("train", "val", "test")}
        if not parts["train"]:
            problems.append(f"fold {k}: no training cases")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            overlap = parts[a] & parts[b]
            if overlap:
                problems.append(f"fold {k}: cases in both {a} and {b}: {sorted(overlap)[:5]}")
        unknown = set().union(*parts.values()) - known
        if unknown:
            problems.append(f"fold {k}: unknown cases {sorted(unknown)[:5]}")
        tested.extend(split.get("test", []))
    if len(splits) > 1:
        # cross-validation: every case is a test case exactly once
        counts = {c: tested.count(c) for c in cases}
        wrong = sorted(c for c, n in counts.items() if n != 1)
        if wrong:
            problems.append(f"cases not tested exactly once across folds: {wrong[:5]}")
    else:
        covered = set().union(*(set(v) for v in splits[0].values())) if splits else set()
        missing = sorted(known - covered)
        if missing:
            problems.append(f"cases in no split: {missing[:5]}")
    return problems


def labelled_subset(train_cases: list[str], fraction: float, seed: int) -> list[str]:
    """The labelled cases of a fold's training set under semi-supervision: ``round(fraction * n)``
    of them (at least one, and at least one left unlabelled), drawn by ``seed``.

    Label-free on purpose: stratifying by lesion size would read the masks of the cases that
    become unlabelled, at training time, which the regime forbids; it needs lesion sizes recorded
    when the data is prepared. The draw is a prefix of one seeded permutation of the sorted
    cases, so for one seed a smaller fraction's subset lies inside a larger one's and two
    training seeds share their labelled cases (as SSL4MIS's fixed lists do).
    """
    n = len(train_cases)
    n_labelled = max(1, int(fraction * n + 0.5))
    if n_labelled >= n:
        raise ValueError(f"labelled fraction {fraction} of {counted(n, 'training case')} leaves no "
                         "unlabelled case")
    order = np.random.default_rng(seed).permutation(sorted(train_cases)).tolist()
    return sorted(order[:n_labelled])


# -- importers: cross-validation that keeps groups together and copes with few cases ---------------
def _fold_from_rest(rest: list[str], test: list[str], rng: np.random.Generator, groups: dict[str, str],
                    val_from_train: bool, fold: int, source: Path) -> dict[str, Any]:
    """Train and validation parts of one fold from its non-test cases, keeping groups together."""
    rest_groups = sorted({groups.get(c, c) for c in rest})
    if len(rest_groups) >= 2:
        n_val = max(1, int(round(VAL_FRACTION * len(rest_groups))))
        val_groups = set(rng.choice(rest_groups, size=n_val, replace=False).tolist())
        val = sorted(c for c in rest if groups.get(c, c) in val_groups)
        return {"train": sorted(c for c in rest if c not in val), "val": val, "test": sorted(test)}
    if not rest:
        raise InputError(source, f"fold {fold} has no training case")
    if val_from_train:
        return {"train": sorted(rest), "val": sorted(rest), "test": sorted(test), VAL_FROM_TRAIN: True}
    raise InputError(source, f"fold {fold} keeps only {sorted(rest)} besides its test cases: too few for "
                             "disjoint train and val; pass --val-from-train to validate on the training "
                             "case, or give more cases or folds")


def _splits_from_test_parts(test_parts: list[list[str]], cases: list[str], seed: int, groups: dict[str, str],
                           val_from_train: bool, source: Path) -> list[dict[str, Any]]:
    """Folds around given test parts (one per fold): validation cases are drawn from the rest."""
    rng = np.random.default_rng(seed)
    return [_fold_from_rest([c for c in cases if c not in set(test)], test, rng, groups, val_from_train, k, source)
            for k, test in enumerate(test_parts)]


def cross_validation(cases: list[str], folds: int, seed: int, val_from_train: bool, source: Path,
                     groups: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """K-fold splits and their protocol record.

    ``groups`` (case -> group, e.g. ACDC's two frames of one patient) keeps a group in one part.
    With fewer groups than folds, the folds drop to the number of groups (leave-one-out).
    """
    groups = groups or {}
    if folds < 2:
        raise InputError(source, f"--folds {folds}: cross-validation needs at least 2 folds")
    units = sorted({groups.get(c, c) for c in cases})
    if len(units) < 2:
        raise InputError(source, f"{counted(len(cases), 'case')}: cross-validation needs at least 2 "
                                 + ("patients" if groups else "cases"))
    k = min(folds, len(units))
    if not groups and len(units) >= k + 1 and len(units) - math.ceil(len(units) / k) >= 2:
        splits: list[dict[str, Any]] = kfold_splits(cases, k, val_fraction=VAL_FRACTION, seed=seed)
    else:
        by_unit = [[c for c in sorted(cases) if groups.get(c, c) in {units[i] for i in test}]
                   for _, test in KFold(k, shuffle=True, random_state=seed).split(units)]
        splits = _splits_from_test_parts(by_unit, sorted(cases), seed, groups, val_from_train, source)
    protocol = {"kind": "kfold", "folds": k, "requested_folds": folds, "seed": seed,
                "val_fraction": VAL_FRACTION, "grouped": bool(groups),
                VAL_FROM_TRAIN: any(s.get(VAL_FROM_TRAIN) for s in splits)}
    return splits, protocol


def given_test_parts(test_parts: list[list[str]], cases: list[str], seed: int, val_from_train: bool,
                     source: Path, origin: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A cross-validation whose test parts the data defines (``origin``, e.g. nnU-Net's held-out
    folds), and its protocol record; each fold's validation cases are drawn from its other cases."""
    splits = _splits_from_test_parts(test_parts, sorted(cases), seed, {}, val_from_train, source)
    protocol = {"kind": "kfold", "folds": len(test_parts), "source": origin, "seed": seed,
                "val_fraction": VAL_FRACTION, VAL_FROM_TRAIN: any(s.get(VAL_FROM_TRAIN) for s in splits)}
    return splits, protocol


# -- cmfnet synth: each synthetic kind's protocol -------------------------------------------------
def _word_sizes(n_cases: int) -> tuple[int, int, int]:
    """WORD's 100/20/30 train/val/test proportions scaled to n_cases, each part non-empty."""
    total = sum(WORD_PROPORTIONS)
    n_val = max(1, math.floor(n_cases * WORD_PROPORTIONS[1] / total + 0.5))
    n_test = max(1, math.floor(n_cases * WORD_PROPORTIONS[2] / total + 0.5))
    return n_cases - n_val - n_test, n_val, n_test


def synth_splits(kind: str, cases: list[str], folds: int = 5) -> list[dict[str, list[str]]]:
    """A synthetic kind's evaluation protocol: k-fold cross-validation (npc) or WORD's fixed split (word)."""
    if kind_spec(kind).fixed_split:
        if len(cases) < 3:
            raise InputError("--cases", f"word needs at least 3 cases (train/val/test), got {len(cases)}")
        splits = fixed_split(cases, *_word_sizes(len(cases)))
    else:
        if folds < 2:
            raise InputError("--folds", f"cross-validation needs at least 2 folds, got {folds}")
        if len(cases) < folds + 1:
            raise InputError("--cases", f"{folds}-fold cross-validation with validation cases needs "
                                        f"at least {folds + 1} cases, got {len(cases)}")
        try:
            splits = kfold_splits(cases, folds=folds)
        except ValueError as err:  # e.g. 3 cases in 2 folds: a fold's training part cannot spare a validation case
            raise InputError("--cases", str(err)) from None
    problems = check_splits(cases, splits)
    if problems:
        raise InputError("--cases", f"cannot split {counted(len(cases), 'case')}: {problems[0]}")
    return splits
