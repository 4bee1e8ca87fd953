"""Time cmfnet.evaluation.metrics.evaluate_case against a plain medpy loop on synthetic cases.

Run: ``python benchmarks/bench_metrics.py [--cases 3] [--shape 64 256 256]``. Prints seconds per
case for both and the largest absolute difference over every metric. Images are in memory, so
the timing is of the metrics only, not of NIfTI reading.

The cases are head-and-neck-like: a small tumour and a smaller lymph node (the situation the
benchmark mostly evaluates); the last case adds a large organ, where the bounding-box crop helps
least.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from cmfnet.evaluation.metrics import evaluate_case

SPACING = (3.0, 1.27, 1.27)
CLASSES = {1: "tumour", 2: "node", 3: "organ"}


def blob(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...],
         rng: np.random.Generator, roughness: float = 0.3) -> np.ndarray:
    """An ellipsoid with a smoothly perturbed boundary."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    radius = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    noise = ndimage.gaussian_filter(rng.normal(size=shape), (1, 4, 4))
    return radius + roughness * noise / noise.std() < 1.0


def synthetic_case(shape: tuple[int, ...], seed: int,
                   with_organ: bool) -> tuple[np.ndarray, np.ndarray]:
    """A reference label map and a prediction that shifts, grows and shrinks its structures."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    tumour = (z * rng.uniform(0.3, 0.7), y * rng.uniform(0.3, 0.7), x * rng.uniform(0.3, 0.7))
    node = (tumour[0], tumour[1] + y * 0.15, tumour[2] - x * 0.12)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    if with_organ:
        ref[blob(shape, (z / 2, y / 2, x / 2), (z / 3, y / 4, x / 4), rng)] = 3
        pred[blob(shape, (z / 2 + 1, y / 2 + 2, x / 2), (z / 3, y / 4.2, x / 4), rng)] = 3
    ref[blob(shape, tumour, (4, 14, 12), rng)] = 1
    pred[blob(shape, (tumour[0] + 0.5, tumour[1] + 2, tumour[2] - 1), (4.5, 13, 13), rng)] = 1
    ref[blob(shape, node, (2, 5, 5), rng)] = 2
    pred[blob(shape, (node[0], node[1] + 1, node[2]), (2, 6, 4), rng)] = 2
    pred[blob(shape, (z * 0.2, y * 0.8, x * 0.8), (1.5, 3, 3), rng)] = 2  # a false-positive node
    return pred, ref


def medpy_loop(pred: np.ndarray, ref: np.ndarray, classes: list[int]) -> list[dict[str, float]]:
    """What the reference code of the compared methods does: one medpy call per metric and class."""
    rows = []
    for k in classes:
        p, r = pred == k, ref == k
        rows.append({"dsc": medpy_binary.dc(p, r),
                     "asd": medpy_binary.asd(p, r, voxelspacing=SPACING),
                     "assd": medpy_binary.assd(p, r, voxelspacing=SPACING),
                     "hd95": medpy_binary.hd95(p, r, voxelspacing=SPACING)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256))
    args = parser.parse_args()
    shape = tuple(args.shape)
    print(f"shape {shape}, spacing {SPACING} mm")
    ours_total = medpy_total = 0.0
    worst = 0.0
    for i in range(args.cases):
        with_organ = i == args.cases - 1
        pred, ref = synthetic_case(shape, seed=i, with_organ=with_organ)
        classes = {k: CLASSES[k] for k in (1, 2, 3) if k < 3 or with_organ}

        start = time.perf_counter()
        ours = evaluate_case(pred, ref, SPACING, classes)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = medpy_loop(pred, ref, list(classes))
        medpy_s = time.perf_counter() - start

        diff = max(abs(row[m] - expected[m]) for row, expected in zip(ours, theirs)
                   for m in ("dsc", "asd", "assd", "hd95"))
        worst = max(worst, diff)
        ours_total += ours_s
        medpy_total += medpy_s
        sizes = ", ".join(f"{row['class']} {row['n_ref']} vox (DSC {row['dsc']:.3f})"
                          for row in ours)
        print(f"case {i}: cmfnet {ours_s:.3f} s, medpy {medpy_s:.3f} s "
              f"(x{medpy_s / ours_s:.0f}), max |diff| {diff:.2e}; {sizes}")
    n = args.cases
    print(f"mean per case: cmfnet {ours_total / n:.3f} s, medpy {medpy_total / n:.3f} s "
          f"(x{medpy_total / ours_total:.0f}); max |diff| over all {worst:.2e}")


if __name__ == "__main__":
    main()
