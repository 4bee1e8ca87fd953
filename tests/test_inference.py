"""Sliding-window inference on volumes of any shape."""

from __future__ import annotations

import pytest
import torch

from cmfnet.inference import gaussian_importance, sliding_window_probabilities, window_starts


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
