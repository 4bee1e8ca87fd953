"""The multi-view gated CRF loss against a brute-force double loop over voxel pairs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cmfnet.training.losses.crf import VIEWS, gated_crf_loss, multiview_crf_loss

SHAPE = (3, 4, 5)  # (z, y, x)


def brute_force_crf(probs: torch.Tensor, features: torch.Tensor, spacing: list[list[float]], radius: int,
                    sigma_xy_mm: float, sigma_intensity: float) -> torch.Tensor:
    """Eq. 5-6 written out: every ordered voxel pair (i, j) of every slice of every view."""
    batch, _, *shape = probs.shape
    voxels = list(itertools.product(*(range(n) for n in shape)))
    losses = []
    for k in range(features.shape[1]):
        total = probs.new_zeros(())
        for (axis_a, axis_b) in VIEWS.values():
            normal = 3 - axis_a - axis_b
            for b in range(batch):
                kernel = torch.zeros(len(voxels), len(voxels), dtype=probs.dtype)
                for i, vi in enumerate(voxels):
                    for j, vj in enumerate(voxels):
                        d = [vj[axis] - vi[axis] for axis in range(3)]
                        if i == j or d[normal] != 0 or abs(d[axis_a]) > radius or abs(d[axis_b]) > radius:
                            continue
                        dist_sq = sum((d[axis] * spacing[b][axis]) ** 2 for axis in range(3))
                        diff = float(features[b, k][vi] - features[b, k][vj])
                        kernel[i, j] = math.exp(-dist_sq / (2 * sigma_xy_mm ** 2)
                                                - diff ** 2 / (2 * sigma_intensity ** 2))
                flat = probs[b].reshape(probs.shape[1], -1).T  # (N, C)
                total = total + (kernel * (1 - flat @ flat.T)).sum()
        losses.append(total / (batch * len(voxels) * len(VIEWS)))
    return torch.stack(losses)


def random_inputs(seed: int, batch: int = 2, classes: int = 3, n_features: int = 2,
                  shape: tuple[int, int, int] = SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, *shape, generator=generator, dtype=torch.float64) * 2
    features = torch.randn(batch, n_features, *shape, generator=generator, dtype=torch.float64) * 0.3
    return logits.requires_grad_(), features


@pytest.mark.parametrize("radius", [1, 2, 4])  # 4 exceeds every side but x: offsets must be clipped
def test_equals_brute_force_value_and_gradient_with_anisotropic_spacing(radius: int) -> None:
    logits, features = random_inputs(seed=radius)
    spacing = [[3.0, 1.2, 0.8], [2.5, 0.9, 1.4]]  # one per sample, anisotropic
    probs = torch.softmax(logits, dim=1)
    ours = gated_crf_loss(probs, features, spacing, radius=radius, sigma_xy_mm=2.5, sigma_intensity=0.3)
    reference = brute_force_crf(probs, features, spacing, radius, sigma_xy_mm=2.5, sigma_intensity=0.3)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    weights = torch.tensor([0.7, 1.3], dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad((weights * ours).sum(), logits, retain_graph=True)
    (grad_reference,) = torch.autograd.grad((weights * reference).sum(), logits)
    assert grad_reference.abs().max() > 1e-4
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-9, atol=1e-14)


def test_one_spacing_for_the_batch_equals_the_same_spacing_per_sample() -> None:
    logits, features = random_inputs(seed=5)
    probs = torch.softmax(logits, dim=1)
    shared = gated_crf_loss(probs, features, (3.0, 1.0, 0.7), radius=2, sigma_xy_mm=3.0)
    per_sample = gated_crf_loss(probs, features, [[3.0, 1.0, 0.7]] * 2, radius=2, sigma_xy_mm=3.0)
    torch.testing.assert_close(shared, per_sample)


def test_bandwidth_is_in_millimetres() -> None:
    """Scaling the spacing and sigma_xy together describes the same physical kernel."""
    logits, features = random_inputs(seed=6)
    probs = torch.softmax(logits, dim=1)
    base = gated_crf_loss(probs, features, (3.0, 1.0, 0.7), radius=2, sigma_xy_mm=3.0)
    scaled = gated_crf_loss(probs, features, (6.0, 2.0, 1.4), radius=2, sigma_xy_mm=6.0)
    finer_kernel = gated_crf_loss(probs, features, (6.0, 2.0, 1.4), radius=2, sigma_xy_mm=3.0)
    torch.testing.assert_close(base, scaled)
    assert (finer_kernel < base).all()  # same voxels farther apart in mm weigh less


def test_downsampled_loss_is_the_loss_of_pooled_logits_softmaxed_after() -> None:
    logits, features = random_inputs(seed=7, shape=(4, 8, 6))
    ours = multiview_crf_loss(logits, features, (3.0, 1.0, 1.0), downsample=(1, 2, 2), radius=2,
                              sigma_xy_mm=4.0, sigma_intensity=0.2)
    pooled = torch.softmax(F.avg_pool3d(logits, (1, 2, 2)), dim=1)
    expected = gated_crf_loss(pooled, F.avg_pool3d(features, (1, 2, 2)), (3.0, 2.0, 2.0), radius=2,
                              sigma_xy_mm=4.0, sigma_intensity=0.2)
    torch.testing.assert_close(ours, expected)


def test_confident_uniform_prediction_costs_nothing_and_the_loss_is_never_negative() -> None:
    _, features = random_inputs(seed=8)
    one_hot = torch.zeros(2, 3, *SHAPE, dtype=torch.float64)
    one_hot[:, 1] = 1
    assert gated_crf_loss(one_hot, features, (1.0, 1.0, 1.0), radius=2).abs().max() < 1e-12
    logits, _ = random_inputs(seed=9)
    assert (gated_crf_loss(torch.softmax(logits, 1), features, (1.0, 1.0, 1.0), radius=2) > 0).all()


def test_extreme_and_half_precision_logits_give_finite_float32_loss_and_gradients() -> None:
    logits = (torch.randn(2, 2, 4, 8, 8) * 1e4).to(torch.bfloat16).requires_grad_()
    features = torch.randn(2, 1, 4, 8, 8).to(torch.bfloat16)
    loss = multiview_crf_loss(logits, features, (3.0, 1.0, 1.0), radius=3)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    loss.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.0, 1.0, 1.0), [[1.0, 1.0, 1.0]] * 3])
def test_bad_spacing_is_refused(spacing: object) -> None:
    logits, features = random_inputs(seed=10)
    with pytest.raises(ValueError, match="spacing"):
        gated_crf_loss(torch.softmax(logits, 1), features, spacing, radius=1)  # type: ignore[arg-type]


def test_mismatched_grids_are_refused() -> None:
    logits, features = random_inputs(seed=11)
    with pytest.raises(ValueError, match="share B and the grid"):
        gated_crf_loss(torch.softmax(logits, 1), features[..., :-1], (1.0, 1.0, 1.0))


@pytest.mark.parametrize("downsample", [(1, 2, 2), (2, 1, 1), (1, 2, 1), (1, 1, 2)])
def test_an_odd_grid_is_pooled_with_its_partial_last_window(downsample: tuple[int, int, int]) -> None:
    """ceil_mode: the last, partial window of an odd grid is kept (5 x 7 x 7 pools to 3 x 4 x 4 by
    2), and every factor pattern pools, not only the default (1, 2, 2)."""
    logits, features = random_inputs(seed=12, shape=(5, 7, 7))
    ours = multiview_crf_loss(logits, features, (3.0, 1.0, 1.0), downsample=downsample, radius=2,
                              sigma_xy_mm=4.0, sigma_intensity=0.2)
    pool = dict(kernel_size=downsample, stride=downsample, ceil_mode=True)
    spacing = [s * k for s, k in zip((3.0, 1.0, 1.0), downsample)]
    expected = gated_crf_loss(torch.softmax(F.avg_pool3d(logits, **pool), 1), F.avg_pool3d(features, **pool),
                              spacing, radius=2, sigma_xy_mm=4.0, sigma_intensity=0.2)
    torch.testing.assert_close(ours, expected)


def test_defaults_are_the_reference_bandwidths() -> None:
    """radius 5, sigma_xy 15 mm, sigma_intensity 0.1: PA-Seg's and WSL4MIS's values
    (docs/reference-methods.md); the CmFNet plugin relies on these defaults."""
    logits, features = random_inputs(seed=13, shape=(4, 16, 16))  # pooled 8 wide: radius 6 would differ
    probs = torch.softmax(logits, 1)
    explicit = gated_crf_loss(probs, features, (1.0, 1.0, 1.0), radius=5, sigma_xy_mm=15.0, sigma_intensity=0.1)
    torch.testing.assert_close(gated_crf_loss(probs, features, (1.0, 1.0, 1.0)), explicit)
    torch.testing.assert_close(multiview_crf_loss(logits, features, (1.0, 1.0, 1.0)),
                               multiview_crf_loss(logits, features, (1.0, 1.0, 1.0), downsample=(1, 2, 2),
                                                  radius=5, sigma_xy_mm=15.0, sigma_intensity=0.1))


@pytest.mark.parametrize("cut", ["batch", "dims"])
def test_each_shape_mismatch_alone_is_refused_with_both_shapes(cut: str) -> None:
    logits, features = random_inputs(seed=14)
    probs = torch.softmax(logits, 1)
    bad = features[:1] if cut == "batch" else features[0]
    with pytest.raises(ValueError) as err:
        gated_crf_loss(probs, bad, (1.0, 1.0, 1.0))
    assert str(err.value) == ("probs (B, C, z, y, x) and features (B, F, z, y, x) must share B and the grid; "
                              f"got {tuple(probs.shape)} and {tuple(bad.shape)}")


@pytest.mark.parametrize("views", [(), ("axial", "oblique")])
def test_unknown_or_no_views_are_refused_naming_them(views: tuple[str, ...]) -> None:
    logits, features = random_inputs(seed=15)
    with pytest.raises(ValueError) as err:
        gated_crf_loss(torch.softmax(logits, 1), features, (1.0, 1.0, 1.0), views=views)
    assert str(err.value) == f"views must be a non-empty subset of {list(VIEWS)}, got {list(views)}"


@pytest.mark.parametrize("downsample", [(1, 2), (1, 0, 2)])
def test_bad_downsample_is_refused_naming_it(downsample: tuple[int, ...]) -> None:
    logits, features = random_inputs(seed=16)
    with pytest.raises(ValueError) as err:
        multiview_crf_loss(logits, features, (1.0, 1.0, 1.0), downsample=downsample)
    assert str(err.value) == f"downsample must be three factors >= 1 (z, y, x), got {list(downsample)}"
