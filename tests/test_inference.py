"""Sliding-window inference on volumes of any shape, and the intensity normalisation it is fed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmfnet.training.sliding_window import gaussian_importance, sliding_window_probabilities, window_starts
from cmfnet.data.normalize import normalize_channel, normalize_image


@pytest.mark.parametrize("shape", [(5, 23, 37), (16, 32, 32), (33, 70, 41), (1, 1, 1)])
def test_sliding_window_reproduces_a_local_model_on_odd_shapes(shape: tuple[int, ...]) -> None:
    """A voxel-wise predictor is translation-invariant, so blending must give back its output exactly."""
    image = torch.randn(2, *shape)

    def voxelwise(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0] * 2, x[:, 1] - x[:, 0], torch.zeros_like(x[:, 0])], dim=1)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        assert all(s % 16 == 0 for s in x.shape[2:])
        return voxelwise(x)

    probs = sliding_window_probabilities(image, predictor, (16, 32, 32), num_classes=3, overlap=0.5)
    expected = torch.softmax(voxelwise(image[None])[0], dim=0)
    assert probs.shape == (3, *shape)
    assert torch.allclose(probs, expected, atol=1e-5)


def test_windows_cover_the_whole_axis_with_overlap() -> None:
    for length in (16, 17, 40, 100):
        starts = window_starts(length, 16, 0.5)
        covered = set()
        for s in starts:
            covered |= set(range(s, s + 16))
        assert covered == set(range(length))
        assert starts[-1] + 16 == length
        assert all(b - a <= 8 for a, b in zip(starts, starts[1:]))


def test_gaussian_weights_the_centre_most() -> None:
    weight = gaussian_importance((8, 16, 16))
    assert weight.max() == weight[3:5, 7:9, 7:9].max()
    assert weight.min() > 0


def test_gaussian_importance_is_the_centred_gaussian_with_sigma_an_eighth_of_the_patch() -> None:
    patch = (4, 8, 6)
    axes = [np.exp(-0.5 * ((np.arange(p) - (p - 1) / 2) / (p / 8)) ** 2) for p in patch]
    expected = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    expected = np.maximum(expected / expected.max(), 1e-3)
    np.testing.assert_allclose(gaussian_importance(patch).numpy(), expected, rtol=1e-5)


def test_overlapping_windows_are_blended_with_gaussian_weights() -> None:
    """A predictor whose answer depends on the window (not only on the voxel) shows the blending:
    two windows along x say p = 0.9 and p = 0.1; where they overlap each voxel must get their
    average weighted by the Gaussian at its position inside each window."""
    patch, shape = (16, 16, 32), (16, 16, 48)
    starts = window_starts(shape[2], patch[2], 0.5)
    assert starts == [0, 16]
    image = torch.arange(shape[2], dtype=torch.float32).expand(1, *shape).clone()  # voxel value = x
    answer = {0: 0.9, 16: 0.1}

    def by_window(x: torch.Tensor) -> torch.Tensor:
        p = torch.tensor([answer[int(origin)] for origin in x[:, 0, 0, 0, 0]]).view(-1, 1, 1, 1)
        return torch.log(torch.cat([1 - p, p], dim=1).view(-1, 2, 1, 1, 1)).expand(-1, -1, *patch)

    probs = sliding_window_probabilities(image, by_window, patch, num_classes=2, overlap=0.5, divisor=16)
    weight = gaussian_importance(patch)
    expected = torch.empty(shape)
    for x in range(shape[2]):
        w = {o: weight[:, :, x - o] if o <= x < o + patch[2] else torch.zeros(patch[:2]) for o in starts}
        expected[:, :, x] = sum(w[o] * answer[o] for o in starts) / sum(w.values())
    torch.testing.assert_close(probs[1], expected, rtol=1e-5, atol=1e-6)


def test_ct_window_clips_and_maps_to_the_unit_interval() -> None:
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0], np.float32)
    out = normalize_channel(hu, {"scheme": "ct", "window": [-160, 240]})
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert out.dtype == np.float32


def test_zscore_clips_percentiles_and_can_ignore_zero_background() -> None:
    rng = np.random.default_rng(0)
    array = np.zeros(1000, np.float32)
    array[500:] = rng.normal(50, 5, 500)
    array[-1] = 1000.0  # an outlier beyond the 99th percentile of the foreground
    spec = {"scheme": "zscore", "clip_percentiles": [1, 99], "mask": "nonzero"}
    out = normalize_channel(array, spec)
    foreground = array[500:]
    clipped = np.clip(foreground, *np.percentile(foreground, [1, 99]))
    np.testing.assert_allclose(out[500:], (clipped - clipped.mean()) / clipped.std(), rtol=1e-4, atol=1e-5)
    assert (out[:500] == 0).all()
    whole = normalize_channel(array, None)
    np.testing.assert_allclose(whole, (array - array.mean()) / array.std(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(normalize_channel(array, {"scheme": "none"}), array)


def test_normalize_image_applies_each_channels_declaration_by_name() -> None:
    image = np.stack([np.linspace(-500, 500, 64, dtype=np.float32).reshape(4, 4, 4)] * 2)
    spec = {"MR": {"scheme": "zscore"}, "CT": {"scheme": "ct", "window": [-100, 100]}}
    out = normalize_image(image, ["CT", "MR"], spec)
    np.testing.assert_array_equal(out[0], normalize_channel(image[0], spec["CT"]))
    np.testing.assert_array_equal(out[1], normalize_channel(image[1], spec["MR"]))


def test_normalisation_defaults_edge_cases_and_errors() -> None:
    """What an empty declaration means, degenerate channels, and one clear error per bad scheme."""
    rng = np.random.default_rng(1)
    array = rng.normal(0, 1, 200).astype(np.float32)
    array[0] = -50.0  # a low outlier: the default percentiles (0, 100) keep it
    for spec in (None, {}, {"clip_percentiles": [0, 100]}):
        np.testing.assert_allclose(normalize_channel(array, spec), (array - array.mean()) / array.std(),
                                   rtol=1e-4, atol=1e-5)
    hu = np.array([-2000.0, -160.0, 240.0, 2000.0], np.float32)
    np.testing.assert_allclose(normalize_channel(hu, {"scheme": "ct"}), [0.0, 0.0, 1.0, 1.0])  # default window
    np.testing.assert_allclose(normalize_channel(np.array([0.0, 40.0], np.float32), {"scheme": "ct"}), [0.4, 0.5])
    np.testing.assert_allclose(normalize_channel(np.array([-100.0, 0.0, 50.0, 100.0], np.float32),
                                                 {"scheme": "ct", "window": [0, 100]}), [0.0, 0.0, 0.5, 1.0])
    flat = np.full(50, 1000.0, np.float32) + rng.normal(0, 1e-3, 50).astype(np.float32)
    assert normalize_channel(flat, None).std() == pytest.approx(1.0, rel=1e-3)  # tiny spread: still z-scored
    assert (normalize_channel(np.zeros(8, np.float32), {"mask": "nonzero"}) == 0).all()  # nothing nonzero
    for spec in ({"scheme": "none"}, {"scheme": "ct"}, None):
        source = array.copy()
        out = normalize_channel(source, spec)
        out += 1.0
        np.testing.assert_array_equal(source, array)  # a new array: the caller's image is never touched
    with pytest.raises(ValueError, match="z-score mask 'edges'"):
        normalize_channel(array, {"mask": "edges"})
    with pytest.raises(ValueError, match="scheme 'minmax'"):
        normalize_channel(array, {"scheme": "minmax"})
