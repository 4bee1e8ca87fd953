"""Can a CRF term see the boundary? Per case and channel, the mean intensity-kernel weight across
each class's boundary and inside it.

A study script (docs/ablations.md, Table III): a Potts CRF loss gates its pull only where the
two sides of a boundary differ by more than σ_I. This prints, for the channels as the network
sees them (the dataset's declared normalisation), the mean of exp(−ΔI² / 2σ_I²) over pairs of
voxels (one inside the class, one in a ring of ``--ring`` voxels around it) and over pairs inside
the class. A boundary weight near the inside weight means that channel's CRF term treats the
boundary like no boundary at all. Pairs are subsampled (every ``--stride``-th voxel). It reads
the cases' labels, so run it on training cases, never as part of a method.

    python benchmarks/crf_gating.py --dataset results/data/synth-npc --cases npc_003 npc_018
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from cmfnet.data.dataset import Dataset
from cmfnet.data.normalize import normalize_image


def mean_kernel(a: np.ndarray, b: np.ndarray, sigma: float) -> float:
    """Mean Gaussian intensity kernel over all pairs (a_i, b_j)."""
    return float(np.exp(-((a[:, None] - b[None, :]) ** 2) / (2 * sigma ** 2)).mean())


def gating(image: np.ndarray, mask: np.ndarray, sigma: float, ring: int, stride: int) -> tuple[float, float, float]:
    """(mean intensity difference inside − ring, kernel weight across the boundary, inside)."""
    around = ndimage.binary_dilation(mask, iterations=ring) & ~mask
    inside, outside = image[mask][::stride], image[around][::stride]
    return (float(inside.mean() - outside.mean()), mean_kernel(inside, outside, sigma),
            mean_kernel(inside, inside, sigma))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", default=None, help="default: the first four cases")
    parser.add_argument("--sigma", type=float, default=0.1, help="σ_I in normalised units (CmFNet's 0.1)")
    parser.add_argument("--ring", type=int, default=3, help="ring width around the class, voxels")
    parser.add_argument("--stride", type=int, default=7, help="keep every n-th voxel of each set")
    args = parser.parse_args()
    dataset = Dataset(args.dataset)
    normalization = dataset.meta.get("normalization", {})
    print("case | class | channel | contrast (normalised) | kernel across boundary | kernel inside")
    for case in args.cases or dataset.cases[:4]:
        image = normalize_image(dataset.load_image(case)[0], dataset.channels, normalization)
        label = dataset.load_label(case)
        for name, value in dataset.labels.items():
            if value == 0 or not (label == value).any():
                continue
            for c, channel in enumerate(dataset.channels):
                contrast, across, inside = gating(image[c], label == value, args.sigma, args.ring, args.stride)
                print(f"{case} | {name} | {channel} | {contrast:+.3f} | {across:.2f} | {inside:.2f}")


if __name__ == "__main__":
    main()
