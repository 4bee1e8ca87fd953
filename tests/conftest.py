"""Shared fixtures: a tiny two-channel dataset built by hand (independent of the phantom generator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmfnet.data.io import IGNORE, Geometry, write_image, write_json
from cmfnet.data.dataset import make_dataset_json
from cmfnet.data.splits import kfold_splits

SHAPE = (16, 32, 32)
SPACING = (3.0, 1.25, 1.25)


def write_case(folder: Path, case: str, labels: np.ndarray, spacing: tuple[float, ...]) -> Path:
    """One label map as ``folder/<case>.nii.gz`` on a default grid, as predictions and references are stored."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case}.nii.gz"
    write_image(labels, path, Geometry.default(labels.shape, spacing))
    return path


def make_tiny_dataset(root: Path, n_cases: int = 8, folds: int = 3, seed: int = 0) -> Path:
    """Two channels with a sphere brighter on channel 1 (MR) than on channel 0 (CT), labels and
    `sim` scribbles (a foreground line through the sphere and a background line at the border)."""
    rng = np.random.default_rng(seed)
    geometry = Geometry.default(SHAPE, SPACING)
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    cases = [f"case_{i:03d}" for i in range(n_cases)]
    for case in cases:
        centre = rng.uniform([5, 10, 10], [11, 22, 22])
        radius = rng.uniform(3.5, 6.0)
        dist = np.sqrt(((zz - centre[0]) * SPACING[0] / SPACING[1]) ** 2 + (yy - centre[1]) ** 2
                       + (xx - centre[2]) ** 2)
        label = (dist < radius).astype(np.uint8)
        ct = 40 + 5 * label + rng.normal(0, 10, SHAPE)
        mr = 100 + 80 * label + rng.normal(0, 10, SHAPE)
        scribble = np.full(SHAPE, IGNORE, np.uint8)
        cz, cy = int(round(centre[0])), int(round(centre[1]))
        scribble[cz, cy, :][label[cz, cy, :] == 1] = 1
        scribble[:, 2, 4:28] = 0
        write_image(ct.astype(np.float32), root / "imagesTr" / f"{case}_0000.nii.gz", geometry)
        write_image(mr.astype(np.float32), root / "imagesTr" / f"{case}_0001.nii.gz", geometry)
        write_image(label, root / "labelsTr" / f"{case}.nii.gz", geometry)
        write_image(scribble, root / "scribblesTr" / "sim" / f"{case}.nii.gz", geometry)
    meta = make_dataset_json("tiny", ["CT", "MR"], {"background": 0, "tumour": 1}, cases, SPACING,
                             kfold_splits(cases, folds=folds, val_fraction=0.2, seed=seed),
                             normalization={"CT": {"scheme": "ct", "window": [-160, 240]},
                                            "MR": {"scheme": "zscore"}})
    write_json(meta, root / "dataset.json")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    """Tests share a 2-core CI machine: keep torch from oversubscribing it."""
    torch.set_num_threads(1)
