"""Per-channel intensity normalisation, declared in ``dataset.json`` and applied at load time.

Stored images keep their physical units (CT in HU, MR as acquired). ``dataset.json`` declares
how each channel is normalised, and training, validation and inference all apply the same
declaration, so a model applied to a new patient sees what it was trained on::

    "normalization": {
        "CT": {"scheme": "ct", "window": [-160, 240]},          # clip to the HU window, scale to [0, 1]
        "MR": {"scheme": "zscore", "clip_percentiles": [0.5, 99.5], "mask": "nonzero"},
        "T1c": {"scheme": "none"}
    }

A channel without an entry is z-scored over the whole volume. The z-score's statistics come from
its ``mask``: ``all`` voxels, the ``nonzero`` ones (skull-stripped or zero-filled MR; the rest is
set to 0), or the ``body`` found in all of the image's channels (:func:`body_mask`; every voxel is
then z-scored with the body's statistics). ``body`` is for MR whose air is noise rather than a
fill: a whole-volume z-score there depends on how much air the field of view holds, so the same
tissue lands at a different value in each case.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cmfnet.data.preprocess import body_mask

SCHEMES = ("ct", "zscore", "none")
ZSCORE_MASKS = ("all", "nonzero", "body")


def normalize_channel(array: np.ndarray, spec: dict[str, Any] | None,
                      body: np.ndarray | None = None) -> np.ndarray:
    """One channel as ``spec`` declares; ``body`` is the image's body mask, needed by ``mask: body``."""
    spec = spec or {"scheme": "zscore"}
    scheme = spec.get("scheme", "zscore")
    array = array.astype(np.float32, copy=True)
    if scheme == "none":
        return array
    if scheme == "ct":
        lo, hi = spec.get("window", (-160.0, 240.0))
        return (np.clip(array, lo, hi) - lo) / float(hi - lo)
    if scheme == "zscore":
        mask_kind = spec.get("mask", "all")
        if mask_kind not in ZSCORE_MASKS:
            raise ValueError(f"unknown z-score mask '{mask_kind}' (expected one of {ZSCORE_MASKS})")
        if mask_kind == "body" and body is None:
            raise ValueError("z-score mask 'body' needs the whole image: use normalize_image")
        masks = {"all": lambda: np.ones(array.shape, bool), "nonzero": lambda: array != 0,
                 "body": lambda: body}
        mask = masks[mask_kind]()
        if not mask.any():
            mask = np.ones(array.shape, bool)
        values = array[mask]
        p_lo, p_hi = spec.get("clip_percentiles", (0.0, 100.0))
        lo, hi = np.percentile(values, [p_lo, p_hi])
        array = np.clip(array, lo, hi)
        values = array[mask]
        out = (array - values.mean()) / max(float(values.std()), 1e-6)
        if mask_kind == "nonzero":
            out[~mask] = 0.0
        return out.astype(np.float32)
    raise ValueError(f"unknown normalisation scheme '{scheme}' (expected one of {SCHEMES})")


def normalize_image(image: np.ndarray, channels: list[str], spec: dict[str, Any] | None) -> np.ndarray:
    """Normalise a (C, z, y, x) image channel by channel as ``dataset.json`` declares."""
    spec = spec or {}
    specs = [spec.get(name) or {} for name in channels]
    body = None
    if any(s.get("mask") == "body" for s in specs):
        # CT channels find the body by HU; the others above a fill or Otsu's threshold
        kinds = ["ct" if s.get("scheme") == "ct" else "mr" for s in specs]
        body = body_mask(list(image), kinds)
    return np.stack([normalize_channel(image[c], specs[c] or None, body) for c in range(len(channels))])
