"""Patch padding and sampling, checked value by value: where patches may lie, what pads them,
and how often foreground is drawn. The engine tests only see whole trainings, which survive a
sampler that draws from the wrong pool or pads with the wrong value."""

from __future__ import annotations

import numpy as np
import pytest

from cmfnet.data.io import IGNORE, Geometry
from cmfnet.errors import InputError
from cmfnet.training.sampling import PatchSampler, TrainVolume, pad_volume


def volume(target: np.ndarray, channels: int = 1) -> TrainVolume:
    image = np.arange(channels * target.size, dtype=np.float32).reshape(channels, *target.shape)
    return TrainVolume(image, target, Geometry.default(target.shape, (1.0, 1.0, 1.0)))


def test_pad_volume_pads_each_short_axis_at_the_end_with_each_channels_minimum() -> None:
    # two channels over three slices, so that a minimum taken over the wrong axis shows
    image = np.stack([np.full((3, 3, 5), 7.0, np.float32), np.full((3, 3, 5), -4.0, np.float32)])
    image[0, 0, 0, 0] = 3.0  # channel 0's minimum
    image[1, 1, 2, 4] = -9.0  # channel 1's minimum
    target = np.zeros((3, 3, 5), np.uint8)
    target[1, 2, 4] = 1
    padded_image, padded_target = pad_volume(image, target, [4, 3, 6])
    assert padded_image.shape == (2, 4, 3, 6) and padded_target.shape == (4, 3, 6)
    # the original sits at the start, untouched
    np.testing.assert_array_equal(padded_image[:, :3, :, :5], image)
    np.testing.assert_array_equal(padded_target[:3, :, :5], target)
    # the padding: each channel's own minimum, targets unlabelled
    assert np.all(padded_image[0, 3:] == 3.0) and np.all(padded_image[0, :, :, 5] == 3.0)
    assert np.all(padded_image[1, 3:] == -9.0) and np.all(padded_image[1, :, :, 5] == -9.0)
    assert np.all(padded_target[3:] == IGNORE) and np.all(padded_target[:, :, 5] == IGNORE)


def test_pad_volume_leaves_a_volume_of_at_least_one_patch_as_it_is() -> None:
    image = np.ones((1, 4, 8, 8), np.float32)
    target = np.zeros((4, 8, 8), np.uint8)
    padded_image, padded_target = pad_volume(image, target, [4, 8, 8])
    assert padded_image is image and padded_target is target
    padded_image, padded_target = pad_volume(image, target, [2, 8, 9])  # only x is short
    assert padded_image.shape == (1, 4, 8, 9) and padded_target.shape == (4, 8, 9)


def test_sampler_reads_the_patch_at_its_box() -> None:
    target = np.zeros((6, 10, 12), np.uint8)
    target[2:4, 3:6, 4:8] = 1
    vol = volume(target, channels=2)
    sampler = PatchSampler({"a": vol}, [2, 4, 4], fg_fraction=0.5, rng=np.random.default_rng(1))
    images, targets, cases, boxes = sampler.sample(3)
    assert images.shape == (3, 2, 2, 4, 4) and targets.shape == (3, 2, 4, 4) and cases == ["a"] * 3
    for image, patch_target, box in zip(images, targets, boxes):
        np.testing.assert_array_equal(image, vol.image[(slice(None), *box)])
        np.testing.assert_array_equal(patch_target, target[box])


def test_sampler_places_a_centre_voxel_anywhere_in_the_patch_and_never_past_the_edge() -> None:
    """One labelled voxel in the middle of a line: every start from (voxel - patch + 1) to the
    voxel itself must occur, and none other; near the border the start is clipped."""
    target = np.full((1, 1, 20), IGNORE, np.uint8)
    target[0, 0, 9] = 0
    sampler = PatchSampler({"a": volume(target)}, [1, 1, 5], fg_fraction=0.0, rng=np.random.default_rng(0))
    starts = {sampler.sample(1)[3][0][2].start for _ in range(400)}
    assert starts == {5, 6, 7, 8, 9}
    target = np.full((1, 1, 20), IGNORE, np.uint8)
    target[0, 0, 18] = 0  # near the end: starts 14 and 15 only (a patch may not pass x = 20)
    sampler = PatchSampler({"a": volume(target)}, [1, 1, 5], fg_fraction=0.0, rng=np.random.default_rng(0))
    assert {sampler.sample(1)[3][0][2].start for _ in range(200)} == {14, 15}
    target = np.full((1, 1, 20), IGNORE, np.uint8)
    target[0, 0, 1] = 0  # near the start: starts 0 and 1 only
    sampler = PatchSampler({"a": volume(target)}, [1, 1, 5], fg_fraction=0.0, rng=np.random.default_rng(0))
    assert {sampler.sample(1)[3][0][2].start for _ in range(200)} == {0, 1}


def fg_share(fg_fraction: float, draws: int = 2000) -> float:
    """Share of single-voxel patches that land on the one foreground voxel of 100 labelled ones."""
    target = np.zeros((1, 1, 100), np.uint8)
    target[0, 0, 37] = 1
    sampler = PatchSampler({"a": volume(target)}, [1, 1, 1], fg_fraction=fg_fraction,
                           rng=np.random.default_rng(0))
    return float(np.mean([sampler.sample(1)[1].item() == 1 for _ in range(draws)]))


@pytest.mark.parametrize("fg_fraction, low, high", [(0.0, 0.0, 0.03), (0.5, 0.45, 0.56), (1.0, 1.0, 1.0)])
def test_fg_fraction_is_the_share_of_patches_centred_on_foreground(fg_fraction: float, low: float,
                                                                    high: float) -> None:
    # expected: fg_fraction + (1 - fg_fraction) / 100 (the uniform draw can hit it too)
    assert low <= fg_share(fg_fraction) <= high


def test_sampler_never_centres_on_unlabelled_voxels_even_when_they_hold_nothing_else() -> None:
    """The labelled pool is the voxels != 255, so a background scribble is drawn and an
    unlabelled voxel is not; the foreground pool excludes unlabelled voxels (255 > 0)."""
    target = np.full((1, 1, 50), IGNORE, np.uint8)
    target[0, 0, 10] = 0
    target[0, 0, 40] = 1
    sampler = PatchSampler({"a": volume(target)}, [1, 1, 1], fg_fraction=0.0, rng=np.random.default_rng(0))
    drawn = {sampler.sample(1)[3][0][2].start for _ in range(300)}
    assert drawn == {10, 40}
    sampler = PatchSampler({"a": volume(target)}, [1, 1, 1], fg_fraction=1.0, rng=np.random.default_rng(0))
    assert {sampler.sample(1)[3][0][2].start for _ in range(100)} == {40}


def test_a_case_without_foreground_is_drawn_around_its_labelled_voxels() -> None:
    target = np.full((1, 1, 30), IGNORE, np.uint8)
    target[0, 0, 3] = 0
    sampler = PatchSampler({"a": volume(target)}, [1, 1, 1], fg_fraction=1.0, rng=np.random.default_rng(0))
    assert {sampler.sample(1)[3][0][2].start for _ in range(50)} == {3}


def test_sampler_draws_every_case_and_only_the_cases_it_was_given() -> None:
    target = np.zeros((1, 1, 4), np.uint8)
    volumes = {name: volume(target) for name in ("a", "b", "c")}
    sampler = PatchSampler(volumes, [1, 1, 1], 0.5, np.random.default_rng(0))
    counts = {name: 0 for name in volumes}
    for name in sampler.sample(600)[2]:
        counts[name] += 1
    assert all(150 <= n <= 250 for n in counts.values()), counts
    only = PatchSampler(volumes, [1, 1, 1], 0.5, np.random.default_rng(0), cases=["c", "a"])
    assert set(only.sample(200)[2]) == {"a", "c"}


def test_forget_indexes_a_replaced_target_anew() -> None:
    target = np.full((1, 1, 10), IGNORE, np.uint8)
    target[0, 0, 2] = 1
    vol = volume(target)
    sampler = PatchSampler({"a": vol}, [1, 1, 1], 1.0, np.random.default_rng(0))
    assert sampler.sample(1)[3][0][2].start == 2
    replaced = np.full((1, 1, 10), IGNORE, np.uint8)
    replaced[0, 0, 7] = 1
    vol.target = replaced
    assert sampler.sample(1)[3][0][2].start == 2  # still the cached index
    sampler.forget("a")
    assert {sampler.sample(1)[3][0][2].start for _ in range(20)} == {7}
    sampler.forget("never sampled")  # nothing indexed yet: nothing to drop, no error


def test_a_case_without_any_labelled_voxel_is_named() -> None:
    target = np.full((1, 2, 2), IGNORE, np.uint8)
    sampler = PatchSampler({"npc_007": volume(target)}, [1, 1, 1], 0.5, np.random.default_rng(0))
    with pytest.raises(InputError) as caught:
        sampler.sample(1)
    assert str(caught.value) == "npc_007: no labelled voxel in the training target"


def test_each_foreground_class_a_case_holds_is_drawn_equally_often() -> None:
    """One spleen voxel beside 98 liver voxels: with the class drawn first, half the
    foreground-centred patches hold the spleen; drawn by voxel, 1 in 99 would."""
    target = np.zeros((1, 1, 100), np.uint8)
    target[0, 0, 1:99] = 1
    target[0, 0, 99] = 2
    sampler = PatchSampler({"a": volume(target)}, [1, 1, 1], fg_fraction=1.0, rng=np.random.default_rng(0))
    drawn = [sampler.sample(1)[1].item() for _ in range(1000)]
    assert 0 not in drawn and 0.45 <= drawn.count(2) / len(drawn) <= 0.55


def test_one_foreground_class_draws_patches_as_a_single_pool_does() -> None:
    """With one foreground class the random stream is a single pool's: the same generator gives
    the same patches as drawing straight from the foreground voxels (NPC's models stay valid)."""
    target = np.zeros((2, 6, 6), np.uint8)
    target[1, 2:5, 1:4] = 1
    sampler = PatchSampler({"a": volume(target)}, [1, 2, 2], fg_fraction=1.0, rng=np.random.default_rng(3))
    fg = np.flatnonzero(target.ravel() == 1)
    rng = np.random.default_rng(3)
    for _ in range(20):
        box = sampler.sample(1)[3][0]
        rng.integers(1)  # the case draw
        rng.random()  # the foreground coin
        centre = np.unravel_index(fg[rng.integers(fg.size)], target.shape)
        starts = [int(rng.integers(max(0, c - p + 1), min(c, s - p) + 1))
                  for c, p, s in zip(centre, [1, 2, 2], target.shape)]
        assert [b.start for b in box] == starts


def test_semi_batches_put_the_labelled_patches_first_and_read_every_patch_at_its_box() -> None:
    from cmfnet.training.sampling import SemiPatchSampler
    labelled = np.zeros((4, 8, 8), np.uint8)
    labelled[1:3, 2:5, 2:5] = 1
    unlabelled = np.full((4, 8, 8), IGNORE, np.uint8)
    volumes = {"a": volume(labelled), "u": volume(unlabelled)}
    sampler = SemiPatchSampler(volumes, [2, 4, 4], 0.5, np.random.default_rng(0), ["a"], ["u"], 1)
    images, targets, cases, boxes = sampler.sample(3)
    assert cases == ["a", "u", "u"] and len(boxes) == 3
    for image, target, case, box in zip(images, targets, cases, boxes):
        np.testing.assert_array_equal(image, volumes[case].image[(slice(None), *box)])
        np.testing.assert_array_equal(target, volumes[case].target[box])
