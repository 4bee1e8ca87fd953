"""Train/validation/test splits.

Each fold is ``{"train": [...], "val": [...], "test": [...]}``. Validation cases are held out of
training for model selection; test cases are touched only by prediction and evaluation.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.model_selection import KFold


def kfold_splits(cases: list[str], folds: int = 5, val_fraction: float = 0.1,
                 seed: int = 12345) -> list[dict[str, list[str]]]:
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
        val = sorted(rng.choice(rest, size=n_val, replace=False).tolist())
        train = [c for c in rest if c not in val]
        out.append({"train": train, "val": val, "test": sorted(ordered[i] for i in test_idx)})
    return out


def fixed_split(cases: list[str], n_train: int, n_val: int, n_test: int,
                seed: int = 12345) -> list[dict[str, list[str]]]:
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
