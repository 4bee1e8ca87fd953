"""Multi-view gated CRF loss (CmFNet Eq. 5-7; Obukhov et al. 2019 as lifted to 3D by PA-Seg).

For one 2D view (axial, sagittal or coronal slices of a ``(z, y, x)`` volume) the loss is

    L = 1/(B*N) * sum_i sum_{j in W(i), j != i} K_ij * (1 - sum_c p_i^c p_j^c)

where ``W(i)`` is the ``(2r+1)^2`` window around voxel ``i`` inside its slice, ``N`` the voxels of
one volume, and ``K_ij = w(|x_i - x_j|_mm) * exp(-|I_i - I_j|^2 / (2 sigma_I^2))`` with the
spatial Gaussian ``w(d) = exp(-d^2 / (2 sigma_xy^2))`` taken over the distance *in millimetres*
(the references use voxels, which mixes scales on anisotropic sagittal and coronal views).
Averaging per-slice losses over the slices of a view gives this same number, because all slices
of a view have equal size. The multi-view loss is the mean over the three views (Eq. 6).

Only pairs inside the volume are counted (the references' zero padding adds a constant to the
value and nothing to the gradient); the Potts compatibility ``1 - p_i . p_j`` is Eq. 5's
``sum_c y_i^c (1 - y_j^c)`` for probabilities summing to one.

Memory: the references unfold the probabilities, kernels and features over the window and keep
it all for backward, ``O(B (C + F + 2) (2r+1)^2 N)`` floats per view, tens of GiB at CmFNet's
patch and batch. Here the kernel is symmetric (``K_ij = K_ji``), so with the message
``m_i = sum_j K_ij p_j`` the loss is ``sum K - <p, m>`` and its exact gradient is ``-2 m``.
``m`` is accumulated offset by offset without autograd, and the loss is returned through the
surrogate ``sum K - 2 <p, m> + <p.detach(), m>``, whose value and gradient are the exact ones.
Memory is then ``O(B (C + F) N)`` whatever the window, and the time is linear in the window.
:func:`multiview_crf_loss` also downsamples first, as PA-Seg does (logits pooled, softmax after).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: view name -> the two (z, y, x) axes spanning its slices
VIEWS: dict[str, tuple[int, int]] = {"axial": (1, 2), "sagittal": (0, 1), "coronal": (0, 2)}


def _half_window(radius: int) -> list[tuple[int, int]]:
    """One offset of each +-pair in the (2r+1)^2 window without its centre."""
    return [(da, db) for da in range(0, radius + 1) for db in range(-radius, radius + 1)
            if da > 0 or db > 0]


def _shift_slices(shift: int, size: int) -> tuple[slice, slice]:
    """Index ranges of voxels i and of their partners i + shift, both inside ``size``."""
    if shift >= 0:
        return slice(0, size - shift), slice(shift, size)
    return slice(-shift, size), slice(0, size + shift)


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when given: half precision would lose the small kernel values."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def spacing_tensor(spacing: Sequence[float] | Sequence[Sequence[float]] | torch.Tensor, batch: int,
                   like: torch.Tensor) -> torch.Tensor:
    """(B, 3) spacing in mm, (z, y, x), from one spacing for the batch or one per sample."""
    values = torch.as_tensor(spacing, dtype=like.dtype, device=like.device)
    if values.shape == (3,):
        values = values.expand(batch, 3)
    if values.shape != (batch, 3):
        raise ValueError(f"spacing must be (z, y, x) or one (z, y, x) per sample, got shape {tuple(values.shape)}")
    if not bool((values > 0).all()):
        raise ValueError(f"spacing must be positive, got {values.tolist()}")
    return values


@torch.no_grad()
def _view_messages(probs: torch.Tensor, features: torch.Tensor, spacing: torch.Tensor,
                   axes: tuple[int, int], radius: int, sigma_xy_mm: float,
                   sigma_intensity: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel sums (F,) and messages m (B, F, C, z, y, x) of one view, one kernel per feature."""
    batch, channels = probs.shape[:2]
    n_features = features.shape[1]
    shape = probs.shape[2:]
    messages = probs.new_zeros((batch, n_features, channels, *shape))
    kernel_sums = probs.new_zeros(n_features)
    p = probs.unsqueeze(1)  # (B, 1, C, z, y, x)
    f = (features * (0.5 ** 0.5 / sigma_intensity)).unsqueeze(2)  # (B, F, 1, z, y, x), scaled once
    dim_a, dim_b = axes[0] + 3, axes[1] + 3  # in the (B, F|1, C|1, z, y, x) layout
    for da, db in _half_window(radius):
        if da >= shape[axes[0]] or abs(db) >= shape[axes[1]]:
            continue
        first_a, second_a = _shift_slices(da, shape[axes[0]])
        first_b, second_b = _shift_slices(db, shape[axes[1]])
        index_i = [slice(None)] * 6
        index_j = [slice(None)] * 6
        index_i[dim_a], index_i[dim_b] = first_a, first_b
        index_j[dim_a], index_j[dim_b] = second_a, second_b
        index_i, index_j = tuple(index_i), tuple(index_j)
        distance_sq = (da * spacing[:, axes[0]]) ** 2 + (db * spacing[:, axes[1]]) ** 2
        log_spatial = (-0.5 * distance_sq / sigma_xy_mm ** 2).view(batch, 1, 1, 1, 1, 1)
        # K = exp(-|dI|^2 / (2 sigma_I^2) - d_mm^2 / (2 sigma_xy^2)), computed in place
        kernel = torch.sub(f[index_i], f[index_j]).square_().neg_().add_(log_spatial).exp_()
        kernel_sums += 2.0 * kernel.sum(dim=(0, 2, 3, 4, 5))  # the pair counts for i and for j
        messages[index_i].addcmul_(kernel, p[index_j])
        messages[index_j].addcmul_(kernel, p[index_i])
    return kernel_sums, messages


def gated_crf_loss(probs: torch.Tensor, features: torch.Tensor,
                   spacing: Sequence[float] | Sequence[Sequence[float]] | torch.Tensor,
                   radius: int = 5, sigma_xy_mm: float = 15.0, sigma_intensity: float = 0.1,
                   views: Sequence[str] = tuple(VIEWS)) -> torch.Tensor:
    """Gated CRF loss of ``probs`` averaged over ``views``; one value per feature channel.

    ``probs`` (B, C, z, y, x) are class probabilities; ``features`` (B, F, z, y, x) are the
    intensities each kernel compares (feature ``k`` gives loss ``k``); ``spacing`` is in mm, (z, y, x).
    Returns a (F,) tensor.
    """
    if probs.dim() != 5 or features.dim() != 5 or probs.shape[0] != features.shape[0] \
            or probs.shape[2:] != features.shape[2:]:
        raise ValueError(f"probs (B, C, z, y, x) and features (B, F, z, y, x) must share B and the grid; "
                         f"got {tuple(probs.shape)} and {tuple(features.shape)}")
    unknown = set(views) - set(VIEWS)
    if unknown or not views:
        raise ValueError(f"views must be a non-empty subset of {list(VIEWS)}, got {list(views)}")
    probs = _at_least_float32(probs)
    features = features.detach().to(probs.dtype)
    spacing_mm = spacing_tensor(spacing, probs.shape[0], probs)
    kernel_sums = probs.new_zeros(features.shape[1])
    messages = None
    for view in views:
        sums, view_messages = _view_messages(probs.detach(), features, spacing_mm, VIEWS[view], radius,
                                             sigma_xy_mm, sigma_intensity)
        kernel_sums += sums
        messages = view_messages if messages is None else messages + view_messages
    assert messages is not None
    p = probs.unsqueeze(1)
    dims = (0, 2, 3, 4, 5)
    # value sum K - <p, m>; gradient -2 m (K is symmetric), see the module docstring
    pairwise = kernel_sums - 2.0 * (p * messages).sum(dim=dims) + (p.detach() * messages).sum(dim=dims)
    voxels = probs.shape[0] * probs.shape[2] * probs.shape[3] * probs.shape[4]
    return pairwise / (voxels * len(views))


def multiview_crf_loss(logits: torch.Tensor, features: torch.Tensor,
                       spacing: Sequence[float] | Sequence[Sequence[float]] | torch.Tensor,
                       downsample: Sequence[int] = (1, 2, 2), radius: int = 5, sigma_xy_mm: float = 15.0,
                       sigma_intensity: float = 0.1) -> torch.Tensor:
    """CmFNet's L_mcrf (Eq. 6) of ``logits`` for each feature channel, on a downsampled grid.

    As in PA-Seg the *logits* and the features are downsampled (average pooling by ``downsample``,
    (z, y, x) factors) and the softmax is taken afterwards; the spacing grows by the same factors,
    so the bandwidths stay in mm. Returns a (F,) tensor.
    """
    factors = tuple(int(k) for k in downsample)
    if len(factors) != 3 or min(factors) < 1:
        raise ValueError(f"downsample must be three factors >= 1 (z, y, x), got {list(downsample)}")
    logits = _at_least_float32(logits)
    features = features.detach().to(logits.dtype)
    spacing_mm = spacing_tensor(spacing, logits.shape[0], logits)
    if factors != (1, 1, 1):
        logits = F.avg_pool3d(logits, factors, factors, ceil_mode=True)
        features = F.avg_pool3d(features, factors, factors, ceil_mode=True)
        spacing_mm = spacing_mm * spacing_mm.new_tensor(factors)
    return gated_crf_loss(torch.softmax(logits, dim=1), features, spacing_mm, radius, sigma_xy_mm,
                          sigma_intensity)
