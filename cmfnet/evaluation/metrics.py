"""Per-case, per-class evaluation metrics (``cmfnet evaluate`` applies them: :mod:`cmfnet.evaluation.evaluate`).

Every value agrees with ``medpy.metric.binary`` 0.5.2 (``dc``, ``asd``, ``assd``, ``hd95`` with
``voxelspacing`` and connectivity 1) wherever medpy defines it, and extends it where medpy raises:

- both masks empty: DSC 1, every distance 0 (nothing to find, nothing found);
- exactly one mask empty: DSC 0, every distance = the image diagonal in mm, so that a missed or
  hallucinated structure gets the worst distance instead of the best (the SSL4MIS/DMSPS bug of
  returning 0, see docs/reference-methods.md section 11).

Which case applied is recorded in every row (column ``empty``), with the penalty value.

NSD (normalised surface Dice, Nikolov et al. 2021; medpy has none) is the share of both surfaces'
voxels that lie within ``nsd_tolerance_mm`` of the other surface, on the same surface voxels and
distances as asd/assd/hd95 (the voxel-count form, not the surface-area-weighted one). The tolerance
(2 mm by default, about one in-plane voxel of the default data) is recorded in every row. Both
masks empty: 1; one empty: 0.

Speed: medpy runs an erosion and a Euclidean distance transform over the whole image for every
directed distance (five transforms for asd + assd + hd95). Here each class is cropped to the
bounding box of the union of its two masks, each surface is extracted once and each direction is
transformed once; asd, assd and hd95 are read from the same two distance arrays. The crop needs no
margin to stay exact: outside the box both masks are background, which is also what
``binary_erosion`` assumes beyond the array edge (``border_value=0``, as in medpy), and every
surface voxel, queried or queried against, lies inside the box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

EMPTY_NONE, EMPTY_BOTH, EMPTY_PRED, EMPTY_REF = "none", "both", "pred", "ref"
METRIC_COLUMNS = ("class_id", "class", "dsc", "asd", "assd", "hd95", "nsd", "tp", "fp", "fn",
                  "n_pred", "n_ref", "empty", "penalty_mm", "nsd_tolerance_mm")
NSD_TOLERANCE_MM = 2.0
VERSION_COLUMNS = ("cmfnet_version",)  # medpy is a test-only dependency: rows never need it


# -- one case ------------------------------------------------------------------------------------
def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The largest distance two voxels of the image can have: the penalty for a one-sided miss."""
    return float(np.sqrt(np.sum((np.asarray(shape, float) * np.asarray(spacing, float)) ** 2)))


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to the surface of ``ref``, and back.

    Same definition as medpy's ``__surface_distances``: the surface is the mask minus its
    face-connected erosion, and each distance is to the nearest surface voxel of the other mask.
    Both masks must be non-empty and should already be cropped (see the module docstring).
    """
    footprint = ndimage.generate_binary_structure(pred.ndim, 1)
    pred_surface = pred ^ ndimage.binary_erosion(pred, structure=footprint)
    ref_surface = ref ^ ndimage.binary_erosion(ref, structure=footprint)
    sampling = np.asarray(spacing, dtype=np.float64)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=sampling)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[ref_surface]
    return to_ref, to_pred


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...]:
    if a is None or b is None:
        box = a if b is None else b
        assert box is not None
        return box
    return tuple(slice(min(sa.start, sb.start), max(sa.stop, sb.stop)) for sa, sb in zip(a, b))


def both_empty_row(class_id: int, name: str, penalty_mm: float,
                   nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[str, Any]:
    """The row of a class absent from prediction and reference: perfect by the documented policy.
    One definition, for evaluate_case and for the classes a case lacks when classes are inferred."""
    row = {"class_id": class_id, "class": name, "dsc": 1.0, "asd": 0.0, "assd": 0.0, "hd95": 0.0, "nsd": 1.0,
           "tp": 0, "fp": 0, "fn": 0, "n_pred": 0, "n_ref": 0, "empty": EMPTY_BOTH,
           "penalty_mm": penalty_mm, "nsd_tolerance_mm": nsd_tolerance_mm}
    return {column: row[column] for column in METRIC_COLUMNS}


def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                  class_names: Mapping[int, str], nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> list[dict[str, Any]]:
    """One row per class in ``class_names`` (background 0 skipped) for one case.

    ``pred`` and ``ref`` are non-negative integer label maps on the same grid, ``spacing`` in
    array axis order. Labels not in ``class_names`` are not evaluated; checking that none occur
    is the caller's job (:func:`evaluate_folders` does it).
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match {pred.ndim}-d arrays")
    class_ids = sorted(k for k in class_names if k != 0)
    penalty = image_diagonal_mm(pred.shape, spacing)
    if not class_ids:
        return []
    # one pass over each full image finds every class's box; everything else works on crops
    max_label = max(class_ids)
    pred_boxes = ndimage.find_objects(pred, max_label)
    ref_boxes = ndimage.find_objects(ref, max_label)
    rows = []
    for k in class_ids:
        pred_box, ref_box = pred_boxes[k - 1], ref_boxes[k - 1]
        if pred_box is None and ref_box is None:
            rows.append(both_empty_row(k, class_names[k], penalty, nsd_tolerance_mm))
            continue
        row: dict[str, Any] = {"class_id": k, "class": class_names[k]}
        box = _union_box(pred_box, ref_box)
        pred_mask, ref_mask = pred[box] == k, ref[box] == k
        tp = int(np.count_nonzero(pred_mask & ref_mask))
        n_pred, n_ref = int(np.count_nonzero(pred_mask)), int(np.count_nonzero(ref_mask))
        row.update(dsc=2.0 * tp / (n_pred + n_ref), tp=tp, fp=n_pred - tp, fn=n_ref - tp,
                   n_pred=n_pred, n_ref=n_ref)
        if pred_box is None or ref_box is None:
            row.update(asd=penalty, assd=penalty, hd95=penalty, nsd=0.0,
                       empty=EMPTY_PRED if pred_box is None else EMPTY_REF)
        else:
            to_ref, to_pred = surface_distances(pred_mask, ref_mask, spacing)
            pooled = np.concatenate([to_ref, to_pred])  # medpy's order: pred->ref first
            row.update(asd=float(to_ref.mean()), assd=float(pooled.mean()),
                       hd95=float(np.percentile(pooled, 95)),
                       nsd=float(np.count_nonzero(pooled <= nsd_tolerance_mm) / pooled.size), empty=EMPTY_NONE)
        row["penalty_mm"], row["nsd_tolerance_mm"] = penalty, nsd_tolerance_mm
        rows.append({column: row[column] for column in METRIC_COLUMNS})
    return rows


# -- folders -------------------------------------------------------------------------------------
