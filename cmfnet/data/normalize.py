"""Per-channel intensity normalisation, declared in ``dataset.json`` and applied at load time.

Stored images keep their physical units (CT in HU, MR as acquired). ``dataset.json`` declares
how each channel is normalised, and training, validation and inference all apply the same
declaration, so a model applied to a new patient sees what it was trained on::

    "normalization": {
        "CT": {"scheme": "ct", "window": [-160, 240]},          # clip to the HU window, scale to [0, 1]
        "MR": {"scheme": "zscore", "clip_percentiles": [0.5, 99.5], "mask": "nonzero"},
        "T1c": {"scheme": "none"}
    }

A channel without an entry is z-scored over the whole volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCHEMES = ("ct", "zscore", "none")


def normalize_channel(array: np.ndarray, spec: dict[str, Any] | None) -> np.ndarray:
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
        if mask_kind not in ("all", "nonzero"):
            raise ValueError(f"unknown z-score mask '{mask_kind}' (expected 'all' or 'nonzero')")
        mask = array != 0 if mask_kind == "nonzero" else np.ones(array.shape, bool)
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
    return np.stack([normalize_channel(image[c], spec.get(name)) for c, name in enumerate(channels)])
