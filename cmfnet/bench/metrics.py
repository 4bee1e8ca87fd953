"""Our metrics (:func:`cmfnet.evaluation.metrics.evaluate_case`) against medpy, MONAI and DeepMind's
surface-distance, on the same synthetic masks and spacing, in one run.

Per case and library: seconds for all classes, our seconds on the same case, and the largest
absolute difference of each metric from ours. Where a library defines a metric differently
(docs/benchmarks.md), the difference is the size of that definition gap, not an error; the
column ``max_abs_diff_same_definition`` takes the maximum over the metrics defined as ours only.

The cases are head-and-neck-like: a small tumour and a smaller lymph node (the situation the
benchmark mostly evaluates); the last case adds a large organ, where our bounding-box crop helps
least. Classes empty on either side are left out: each library has its own policy there (ours
the image diagonal, medpy raises, MONAI and DeepMind return inf or nan). Images are in memory, so
the timing is of the metrics only, not of NIfTI reading. Each library runs once on a tiny case
first, so that lazy imports are not timed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from cmfnet.bench.common import distribution_version, require, size_text
from cmfnet.errors import InputError
from cmfnet.evaluation.metrics import NSD_TOLERANCE_MM, evaluate_case

SPACING = (3.0, 1.27, 1.27)  # NPC CT, (z, y, x) mm
CASES, SHAPE = 3, (64, 256, 256)  # the defaults: a head-and-neck CT crop
METRICS = ("dsc", "asd", "assd", "hd95", "nsd")
ClassValues = list[dict[str, float]]  # one {metric: value} per class, in class order


# -- synthetic cases -----------------------------------------------------------------------------
def blob(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...],
         rng: np.random.Generator, roughness: float = 0.3) -> np.ndarray:
    """An ellipsoid with a smoothly perturbed boundary."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    radius = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    noise = ndimage.gaussian_filter(rng.normal(size=shape), (1, 4, 4))
    return radius + roughness * noise / noise.std() < 1.0


def synthetic_case(shape: tuple[int, int, int], seed: int, with_organ: bool) -> tuple[np.ndarray, np.ndarray]:
    """A prediction and a reference label map (1 tumour, 2 node, 3 organ); the prediction shifts,
    grows and shrinks the structures and adds a false-positive node."""
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


def classes_on_both_sides(pred: np.ndarray, ref: np.ndarray) -> list[int]:
    return [int(k) for k in np.intersect1d(np.unique(pred), np.unique(ref)) if k != 0]


# -- the implementations -------------------------------------------------------------------------
def ours(pred: np.ndarray, ref: np.ndarray, classes: Sequence[int], spacing: Sequence[float],
         tolerance: float) -> ClassValues:
    rows = evaluate_case(pred, ref, spacing, {k: str(k) for k in classes}, tolerance)
    return [{m: float(row[m]) for m in METRICS} for row in rows]


def medpy_loop(pred: np.ndarray, ref: np.ndarray, classes: Sequence[int], spacing: Sequence[float],
               tolerance: float) -> ClassValues:
    """What the compared methods' code does: one medpy call per metric and class (medpy has no NSD)."""
    binary = require("medpy.metric.binary", "medpy")
    values = []
    for k in classes:
        p, r = pred == k, ref == k
        values.append({"dsc": binary.dc(p, r), "asd": binary.asd(p, r, voxelspacing=spacing),
                       "assd": binary.assd(p, r, voxelspacing=spacing),
                       "hd95": binary.hd95(p, r, voxelspacing=spacing), "nsd": float("nan")})
    return values


def monai_metrics(pred: np.ndarray, ref: np.ndarray, classes: Sequence[int], spacing: Sequence[float],
                  tolerance: float) -> ClassValues:
    """MONAI's functional metrics on one-hot (1, classes, z, y, x) masks, the way MONAI is used."""
    metrics = require("monai.metrics", "monai")
    ids = torch.tensor(list(classes)).view(1, -1, 1, 1, 1)
    p, r = torch.from_numpy(pred)[None, None] == ids, torch.from_numpy(ref)[None, None] == ids
    spacing = [float(s) for s in spacing]  # MONAI refuses a mix of int and float
    with warnings.catch_warnings():  # MONAI's own deprecation notices about its internals
        warnings.simplefilter("ignore")
        table = {
            "dsc": metrics.compute_dice(p, r, include_background=True),
            "asd": metrics.compute_average_surface_distance(p, r, include_background=True, symmetric=False,
                                                            spacing=spacing),
            "assd": metrics.compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                             spacing=spacing),
            "hd95": metrics.compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                                       spacing=spacing),
            "nsd": metrics.compute_surface_dice(p, r, [tolerance] * len(classes), include_background=True,
                                                spacing=spacing),
        }
    return [{m: float(table[m][0, i]) for m in METRICS} for i in range(len(classes))]


def deepmind_metrics(pred: np.ndarray, ref: np.ndarray, classes: Sequence[int], spacing: Sequence[float],
                     tolerance: float) -> ClassValues:
    """DeepMind's surface-distance, per class: surfel-area-weighted distances on its own surfaces.

    It has no ASSD; the area-weighted mean over both surfaces' surfels stands in for it.
    """
    sd = require("surface_distance", "surface-distance-based-measures")
    values = []
    with warnings.catch_warnings():  # it imports from scipy.ndimage namespaces deprecated since
        warnings.simplefilter("ignore", DeprecationWarning)
        for k in classes:
            p, r = pred == k, ref == k
            distances = sd.compute_surface_distances(r, p, list(spacing))
            _, pred_to_ref = sd.compute_average_surface_distance(distances)
            weighted = (np.sum(distances["distances_gt_to_pred"] * distances["surfel_areas_gt"])
                        + np.sum(distances["distances_pred_to_gt"] * distances["surfel_areas_pred"]))
            area = np.sum(distances["surfel_areas_gt"]) + np.sum(distances["surfel_areas_pred"])
            values.append({"dsc": sd.compute_dice_coefficient(r, p), "asd": pred_to_ref, "assd": weighted / area,
                           "hd95": sd.compute_robust_hausdorff(distances, 95),
                           "nsd": sd.compute_surface_dice_at_tolerance(distances, tolerance)})
    return [{m: float(v) for m, v in row.items()} for row in values]


class Library(NamedTuple):
    module: str
    distribution: str
    run: Callable[..., ClassValues]
    same_definition: tuple[str, ...]  # the metrics it defines as we do (docs/benchmarks.md)


LIBRARIES = {
    "medpy": Library("medpy.metric.binary", "medpy", medpy_loop, ("dsc", "asd", "assd", "hd95")),
    "monai": Library("monai.metrics", "monai", monai_metrics, ("dsc", "asd", "assd", "nsd")),
    "deepmind": Library("surface_distance", "surface-distance-based-measures", deepmind_metrics, ("dsc",)),
}


def timed(function: Callable[..., ClassValues], *args: object) -> tuple[float, ClassValues]:
    start = time.perf_counter()
    values = function(*args)
    return time.perf_counter() - start, values


def compare_case(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], libraries: Sequence[str],
                 tolerance: float = NSD_TOLERANCE_MM) -> list[dict[str, object]]:
    """One row per library: its seconds, ours, and the largest |difference| per metric from ours."""
    classes = classes_on_both_sides(pred, ref)
    if not classes:
        raise InputError("--shape", f"{size_text(pred.shape)} is too small: no class is in both masks")
    ours_seconds, reference = timed(ours, pred, ref, classes, spacing, tolerance)
    rows = []
    for name in libraries:
        library = LIBRARIES[name]
        seconds, values = timed(library.run, pred, ref, classes, spacing, tolerance)
        row: dict[str, object] = {"library": name, "library_version": distribution_version(library.distribution),
                                  "classes": len(classes), "seconds": seconds, "ours_seconds": ours_seconds,
                                  "time_ratio": seconds / ours_seconds}
        for metric in METRICS:
            # np.max, not max: a nan (a metric the library lacks) must show whatever its position
            row[f"max_abs_diff_{metric}"] = float(np.max([abs(theirs[metric] - mine[metric])
                                                          for theirs, mine in zip(values, reference)], initial=0.0))
        row["max_abs_diff_same_definition"] = float(np.max([row[f"max_abs_diff_{m}"] for m in library.same_definition]))
        rows.append(row)
    return rows


def benchmark(cases: int = CASES, shape: tuple[int, int, int] = SHAPE, spacing: Sequence[float] = SPACING,
              libraries: Sequence[str] = tuple(LIBRARIES),
              tolerance: float = NSD_TOLERANCE_MM) -> list[dict[str, object]]:
    """Rows per case and library, then one ``case = all`` row per library (mean seconds per case,
    the ratio of the totals, the largest differences over all cases)."""
    if cases < 1:
        raise InputError("--cases", f"must be at least 1, got {cases}")
    for name in libraries:
        require(LIBRARIES[name].module, LIBRARIES[name].distribution)
    compare_case(*synthetic_case((16, 64, 64), 0, False), spacing, libraries, tolerance)  # warm-up, untimed
    common = {"benchmark": "metrics", "shape": size_text(shape), "spacing_mm": "x".join(map(str, spacing)),
              "nsd_tolerance_mm": tolerance}
    rows = []
    for case in range(cases):
        pred, ref = synthetic_case(shape, seed=case, with_organ=case == cases - 1)
        for row in compare_case(pred, ref, spacing, libraries, tolerance):
            rows.append({**common, "case": str(case), **row})
            print(f"case {case} {row['library']:8}: {row['seconds']:.3f} s, ours {row['ours_seconds']:.3f} s "
                  f"(x{row['time_ratio']:.1f}); max |diff| where defined as ours "
                  f"{row['max_abs_diff_same_definition']:.2e}", flush=True)
    for name in libraries:
        mine = [r for r in rows if r["library"] == name]
        total, ours_total = sum(float(r["seconds"]) for r in mine), sum(float(r["ours_seconds"]) for r in mine)
        summary: dict[str, object] = {**mine[0], "case": "all", "classes": sum(int(r["classes"]) for r in mine),
                                      "seconds": total / cases, "ours_seconds": ours_total / cases,
                                      "time_ratio": total / ours_total}
        for key in [k for k in summary if k.startswith("max_abs_diff_")]:
            summary[key] = float(np.max([float(r[key]) for r in mine]))
        rows.append(summary)
        print(f"all cases {name:8}: {summary['seconds']:.3f} s per case, ours {summary['ours_seconds']:.3f} s "
              f"(x{summary['time_ratio']:.1f})")
    return rows
