"""What the engine does differently under ``supervision: semi`` (docs/semi-supervised.md): which
training cases are labelled, what training reads of each case, and batches that mix the two.

Kept out of the engine so that it reads the same for every supervision: it asks here which cases
are labelled, which target to hold and which sampler to draw with.
"""

from __future__ import annotations

import math

import numpy as np

from cmfnet.data.dataset import Dataset
from cmfnet.data.io import IGNORE
from cmfnet.data.splits import labelled_subset
from cmfnet.errors import InputError
from cmfnet.training.cards import Card
from cmfnet.training.config import TrainConfig
from cmfnet.training.sampling import PatchSampler, SemiPatchSampler, TrainVolume


def labelled_cases(card: Card, config: TrainConfig, train_cases: list[str]) -> list[str]:
    """The training cases whose supervision training reads: all of them, or under semi the fold's
    labelled subset (:func:`cmfnet.data.splits.labelled_subset`)."""
    if card.supervision != "semi":
        return list(train_cases)
    if config.labelled_fraction is None:
        raise InputError(card.path, "supervision: semi needs train.labelled_fraction (e.g. 0.1)")
    try:
        return labelled_subset(train_cases, config.labelled_fraction, config.labelled_seed)
    except ValueError as err:
        raise InputError(card.path, str(err)) from None


def training_target(dataset: Dataset, card: Card, case: str, labelled: bool, shape: tuple[int, ...]) -> np.ndarray:
    """A training case's target: its mask (``mask``, or a labelled case under ``semi``), its
    scribble (``scribble``), or under ``semi`` for an unlabelled case all-unlabelled, without
    opening any of its annotation files."""
    if card.supervision == "mask" or (card.supervision == "semi" and labelled):
        return dataset.load_label(case)
    if card.supervision == "semi":
        return np.full(shape, IGNORE, np.uint8)
    return dataset.load_scribble(case, card.scribble_variant)


def make_sampler(card: Card, config: TrainConfig, volumes: dict[str, TrainVolume], train_cases: list[str],
                 labelled: list[str], rng: np.random.Generator) -> PatchSampler | SemiPatchSampler:
    """The patch sampler of this supervision; under semi, ``labelled_batch_size`` labelled patches
    (default half the batch, rounded up) and the rest unlabelled."""
    if card.supervision != "semi":
        return PatchSampler(volumes, config.patch_size, config.fg_fraction, rng)
    per_batch = config.labelled_batch_size or math.ceil(config.batch_size / 2)
    if not 0 < per_batch < config.batch_size:
        raise InputError(card.path, f"train.labelled_batch_size={per_batch} with batch_size {config.batch_size}: "
                                    "a semi-supervised batch needs labelled and unlabelled patches")
    unlabelled = [c for c in train_cases if c not in labelled]
    return SemiPatchSampler(volumes, config.patch_size, config.fg_fraction, rng, labelled, unlabelled, per_batch)
