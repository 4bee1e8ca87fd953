"""CmFNet's multi-view gated CRF term against an unfold-based reference, side by side: value,
gradient, time and peak memory of forward + backward.

The reference (:func:`unfold_gated_crf_loss`) is the way the published code computes a gated CRF
(Obukhov et al. 2019; PA-Seg's and DMSPS's 3D versions, shared/docs/reference-methods.md §6),
written here from that description: every voxel's window is unfolded (``unfoldNd``) into a
``(B, channels, window, voxels)`` tensor, the kernel and the Potts compatibility are formed on the
unfolded tensors, and autograd keeps them for backward. It computes the same energy as ours
(:mod:`cmfnet.training.losses.crf`): same kernels (spatial Gaussian over the distance in mm times
the intensity Gaussian), same window, same views, one loss per feature channel, only pairs inside
the volume (the unfolded all-ones volume is the gate that drops the zero padding). So the two must
agree to rounding, and what differs is the cost.

Each (implementation, device, batch) runs in a fresh process: on CPU the peak is the highest
resident set size seen during the call minus the size just before it, on CUDA torch's peak
allocation above the inputs. Both implementations get the same seeded inputs: random logits and a
two-channel image scaled to 0.1 SD, so that the intensity kernel (sigma_I 0.1) is neither 0 nor 1.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch
import torch.nn.functional as F

from cmfnet.bench.common import GIB, ResidentPeak, distribution_version, in_fresh_process, require, size_text
from cmfnet.training.losses.crf import VIEWS, multiview_crf_loss, spacing_tensor

SPACING = (3.0, 1.27, 1.27)  # NPC CT, (z, y, x) mm
PAPER_PATCH = (16, 96, 96)
#: the default batch on every device: at the paper's patch and the plugin's (1, 2, 2) grid the
#: unfold reference stays under 8 GiB on CPU (docs/benchmarks.md); ``--batch`` takes smaller ones
PAPER_BATCH = 16
IMPLEMENTATIONS = ("ours", "unfold")


def unfold_gated_crf_loss(probs: torch.Tensor, features: torch.Tensor, spacing: Sequence[float] | torch.Tensor,
                          radius: int = 5, sigma_xy_mm: float = 15.0, sigma_intensity: float = 0.1,
                          views: Sequence[str] = tuple(VIEWS)) -> torch.Tensor:
    """The gated CRF energy of :func:`cmfnet.training.losses.crf.gated_crf_loss`, by unfolding.

    For each view the window is a ``(2r+1)^2`` block in that view's plane (kernel size 1 along
    the third axis), so unfolding the 3D volume visits each voxel's in-slice neighbours without
    permuting the volume into 2D slices. ``(1/(B N)) sum_i sum_{j != i} K_ij (1 - p_i . p_j)``
    per view, averaged over the views; returns a (F,) tensor.
    """
    unfold_nd = require("unfoldNd", "unfoldNd").unfoldNd
    batch, classes = probs.shape[:2]
    n_features, grid = features.shape[1], probs.shape[2:]
    voxels = math.prod(grid)
    spacing_mm = spacing_tensor(spacing, batch, probs)
    features = features.detach().to(probs.dtype)
    inside = probs.new_ones((1, 1, *grid))
    total = probs.new_zeros(n_features)
    for view in views:
        size, padding = [1, 1, 1], [0, 0, 0]
        for axis in VIEWS[view]:
            size[axis], padding[axis] = 2 * radius + 1, radius
        window = math.prod(size)

        def unfold(volume: torch.Tensor) -> torch.Tensor:
            """(B, c, z, y, x) -> (B, c, window, voxels), windows in row-major offset order."""
            return unfold_nd(volume, size, padding=padding).view(volume.shape[0], volume.shape[1], window, voxels)

        offsets = torch.tensor(list(itertools.product(*(range(-p, p + 1) for p in padding))),
                               dtype=probs.dtype, device=probs.device)  # (window, 3), unfold's order
        distance_sq = ((offsets[None] * spacing_mm[:, None]) ** 2).sum(-1)  # (B, window), mm^2
        spatial = torch.exp(-0.5 * distance_sq / sigma_xy_mm ** 2)
        spatial[:, window // 2] = 0.0  # the centre: no pair of a voxel with itself
        gate = spatial.view(batch, 1, window, 1) * unfold(inside)  # 0 where the partner is padding
        intensity = features.view(batch, n_features, 1, voxels) - unfold(features)
        kernel = gate * torch.exp(-0.5 * (intensity / sigma_intensity) ** 2)  # (B, F, window, N)
        compatibility = 1.0 - (probs.view(batch, classes, 1, voxels) * unfold(probs)).sum(1, keepdim=True)
        total = total + (kernel * compatibility).sum(dim=(0, 2, 3))
    return total / (batch * voxels * len(views))


def unfold_multiview_crf_loss(logits: torch.Tensor, features: torch.Tensor, spacing: Sequence[float],
                              downsample: Sequence[int] = (1, 2, 2), radius: int = 5, sigma_xy_mm: float = 15.0,
                              sigma_intensity: float = 0.1) -> torch.Tensor:
    """:func:`cmfnet.training.losses.crf.multiview_crf_loss` with the unfold reference: the same
    average pooling of logits and features, softmax after it, spacing grown by the factors."""
    factors = tuple(int(k) for k in downsample)
    spacing_mm = torch.tensor([s * k for s, k in zip(spacing, factors)], dtype=logits.dtype, device=logits.device)
    if factors != (1, 1, 1):
        logits = F.avg_pool3d(logits, factors, factors, ceil_mode=True)
        features = F.avg_pool3d(features, factors, factors, ceil_mode=True)
    return unfold_gated_crf_loss(torch.softmax(logits, dim=1), features, spacing_mm, radius, sigma_xy_mm,
                                 sigma_intensity)


LOSSES = {"ours": multiview_crf_loss, "unfold": unfold_multiview_crf_loss}


def _forward_backward(implementation: str, device: str, batch: int, classes: int, patch: tuple[int, int, int],
                      downsample: tuple[int, int, int], radius: int, threads: int) -> dict[str, Any]:
    """One forward + backward of the plugin's call (one loss per modality), in this process."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    logits = torch.randn(batch, classes, *patch, device=dev, requires_grad=True)
    image = 0.1 * torch.randn(batch, 2, *patch, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    with ResidentPeak() as resident:
        start, cpu_start = time.perf_counter(), time.process_time()
        losses = LOSSES[implementation](logits, image, SPACING, downsample, radius)
        (0.2 * losses.sum()).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = torch.cuda.max_memory_allocated() - base if dev.type == "cuda" else resident.growth
    assert logits.grad is not None
    return {"wall_s": seconds, "cpu_s": cpu_seconds, "peak_gib": peak / GIB,
            "losses": losses.detach().cpu().double(), "grad": logits.grad.detach().cpu().double()}


def _relative(theirs: torch.Tensor, ours: torch.Tensor) -> float:
    return float((theirs - ours).abs().max() / ours.abs().max())


def benchmark(devices: Sequence[str], batches: Sequence[int], patch: tuple[int, int, int],
              downsamples: Sequence[tuple[int, int, int]], classes: int = 2, radius: int = 5,
              threads: int | None = None, implementations: Sequence[str] = IMPLEMENTATIONS) -> list[dict[str, object]]:
    """One row per (grid, device, batch, implementation); the unfold rows carry the ratios to ours.

    A run that fails (a process killed for memory, a CUDA out-of-memory) gives a row saying so
    instead of numbers.
    """
    if "unfold" in implementations:
        require("unfoldNd", "unfoldNd")
    threads = threads or torch.get_num_threads()
    rows: list[dict[str, object]] = []
    for factors in downsamples:
        grid = tuple(-(-p // f) for p, f in zip(patch, factors))
        for device in devices:
            for batch in batches:
                results: dict[str, dict[str, Any]] = {}
                for name in implementations:
                    row: dict[str, object] = {
                        "benchmark": "crf", "implementation": name, "device": device, "batch": batch,
                        "patch": size_text(patch), "downsample": size_text(factors), "grid": size_text(grid),
                        "classes": classes, "radius": radius, "kernels": 2, "views": len(VIEWS),
                        "threads": threads, "unfoldnd_version": distribution_version("unfoldNd")}
                    try:
                        results[name] = in_fresh_process(_forward_backward, name, device, batch, classes, patch,
                                                         factors, radius, threads)
                    except (BrokenProcessPool, torch.OutOfMemoryError) as err:
                        row["status"] = f"failed: {type(err).__name__} (out of memory?)"
                        rows.append(row)
                        print(f"{name:6} {device:6} batch {batch}: {row['status']}", flush=True)
                        continue
                    result = results[name]
                    row.update(status="ok", wall_s=result["wall_s"], cpu_s=result["cpu_s"],
                               peak_gib=result["peak_gib"], loss_ct=float(result["losses"][0]),
                               loss_mr=float(result["losses"][1]))
                    if name != "ours" and "ours" in results:
                        mine = results["ours"]
                        row.update(rel_diff_loss=_relative(result["losses"], mine["losses"]),
                                   rel_diff_grad=_relative(result["grad"], mine["grad"]),
                                   memory_ratio=result["peak_gib"] / max(mine["peak_gib"], 1e-9),
                                   time_ratio=result["wall_s"] / mine["wall_s"])
                    rows.append(row)
                    ratios = (f"; x{row['memory_ratio']:.1f} ours' memory, x{row['time_ratio']:.1f} its time, "
                              f"loss rel. diff {row['rel_diff_loss']:.1e}" if "memory_ratio" in row else "")
                    print(f"{name:6} {device:6} batch {batch} grid {size_text(grid)}: {row['wall_s']:.2f} s, "
                          f"peak {row['peak_gib']:.3f} GiB{ratios}", flush=True)
    return rows
