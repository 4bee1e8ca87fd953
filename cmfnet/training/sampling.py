"""Training volumes held in memory and the patch samplers the engine draws batches with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmfnet.data.io import IGNORE, Geometry
from cmfnet.errors import InputError


@dataclass
class TrainVolume:
    """A training case held in memory: normalised image and its supervision, padded to a patch."""

    image: np.ndarray  # (C, z, y, x) float32
    target: np.ndarray  # (z, y, x) uint8, 255 = unlabelled
    geometry: Geometry

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm from the case's image header."""
        z, y, x = self.geometry.spacing
        return (z, y, x)


def pad_volume(image: np.ndarray, target: np.ndarray, patch: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad at the end to at least one patch: images with each channel's minimum, targets unlabelled."""
    pads = [(0, max(0, p - s)) for p, s in zip(patch, target.shape)]
    if not any(after for _, after in pads):
        return image, target
    fill = image.reshape(image.shape[0], -1).min(axis=1)
    image = np.stack([np.pad(ch, pads, constant_values=v) for ch, v in zip(image, fill)])
    return image, np.pad(target, pads, constant_values=IGNORE)


class PatchSampler:
    """Draws patches that always contain labelled voxels.

    With probability ``fg_fraction`` a patch is placed around a random foreground-labelled voxel,
    otherwise around any labelled voxel; the chosen voxel lies anywhere inside the patch.

    With several foreground classes in a case, the class is drawn first, uniformly among those it
    holds (as nnU-Net does), so that small organs are not drowned by the liver. With one, the draw
    is over a range of one, for which numpy consumes no random bits: one-class data (NPC) get the
    patches they got before classes were drawn.

    It reads the engine's volumes as they are when it samples (only ``cases`` of them, when given:
    the engine fills the volumes after making the sampler); :meth:`forget` drops what it indexed
    of a case whose target was replaced.
    """

    def __init__(self, volumes: dict[str, TrainVolume], patch: list[int], fg_fraction: float,
                 rng: np.random.Generator, cases: list[str] | None = None) -> None:
        self.volumes = volumes
        self.patch = patch
        self.fg_fraction = fg_fraction
        self.rng = rng
        self.cases = None if cases is None else sorted(cases)
        self._index: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}

    def forget(self, case: str) -> None:
        """The case's target changed (DMSPS stage 2): index its labelled voxels anew."""
        self._index.pop(case, None)

    def _labelled(self, case: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """The case's labelled voxels, and its foreground-labelled voxels per class it holds."""
        if case not in self._index:
            flat = self.volumes[case].target.ravel()
            labelled = np.flatnonzero(flat != IGNORE)
            if labelled.size == 0:
                raise InputError(case, "no labelled voxel in the training target")
            values = flat[labelled]
            per_class = [labelled[values == k] for k in np.unique(values) if k > 0]
            self._index[case] = (labelled, per_class)
        return self._index[case]

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[slice, ...]]]:
        images, targets, case_ids, boxes = [], [], [], []
        cases = sorted(self.volumes) if self.cases is None else self.cases
        for _ in range(batch_size):
            case = cases[self.rng.integers(len(cases))]
            volume = self.volumes[case]
            labelled, per_class = self._labelled(case)
            pool = labelled
            if per_class and self.rng.random() < self.fg_fraction:
                pool = per_class[self.rng.integers(len(per_class))]
            centre = np.unravel_index(pool[self.rng.integers(pool.size)], volume.target.shape)
            box = []
            for c, p, s in zip(centre, self.patch, volume.target.shape):
                lo, hi = max(0, c - p + 1), min(c, s - p)
                box.append(slice(start := int(self.rng.integers(lo, hi + 1)), start + p))
            box_t = tuple(box)
            images.append(volume.image[(slice(None), *box_t)])
            targets.append(volume.target[box_t])
            case_ids.append(case)
            boxes.append(box_t)
        return np.stack(images), np.stack(targets), case_ids, boxes



class SemiPatchSampler:
    """Semi-supervised batches: ``labelled_per_batch`` patches of labelled cases, drawn as
    :class:`PatchSampler` draws them, then patches of unlabelled cases placed uniformly at random
    (their targets are all unlabelled, so there is no voxel to centre on)."""

    def __init__(self, volumes: dict[str, TrainVolume], patch: list[int], fg_fraction: float,
                 rng: np.random.Generator, labelled: list[str], unlabelled: list[str],
                 labelled_per_batch: int) -> None:
        self.volumes = volumes
        self.patch = patch
        self.rng = rng
        self.labelled = PatchSampler(volumes, patch, fg_fraction, rng, cases=labelled)
        self.unlabelled = sorted(unlabelled)
        self.labelled_per_batch = labelled_per_batch

    def forget(self, case: str) -> None:
        """See :meth:`PatchSampler.forget`."""
        self.labelled.forget(case)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[slice, ...]]]:
        images, targets, case_ids, boxes = self.labelled.sample(self.labelled_per_batch)
        more_images, more_targets = [], []
        for _ in range(batch_size - self.labelled_per_batch):
            case = self.unlabelled[self.rng.integers(len(self.unlabelled))]
            volume = self.volumes[case]
            box = tuple(slice(start := int(self.rng.integers(0, s - p + 1)), start + p)
                        for p, s in zip(self.patch, volume.target.shape))
            more_images.append(volume.image[(slice(None), *box)])
            more_targets.append(volume.target[box])
            case_ids.append(case)
            boxes.append(box)
        return (np.concatenate([images, np.stack(more_images)]), np.concatenate([targets, np.stack(more_targets)]),
                case_ids, boxes)
