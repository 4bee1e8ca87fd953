"""Geometry and random-shape primitives the phantoms are drawn with (millimetre grids, smooth
fields, blobs, tissue tables, CT noise)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage
from threadpoolctl import threadpool_limits

Shape = tuple[int, int, int]
Spacing = tuple[float, float, float]
CaseGenerator = Callable[[np.random.Generator, Shape, Spacing], dict[str, np.ndarray]]


def single_threaded_blas(generator: CaseGenerator) -> CaseGenerator:
    """Run a case generator with one BLAS thread.

    The noise fields are many small matrix products, for which BLAS threads cost more than they
    give (2.5x slower on a busy 2-core machine); parallelism belongs to the pipeline's jobs.
    """
    @functools.wraps(generator)
    def wrapped(rng: np.random.Generator, shape: Shape, spacing: Spacing) -> dict[str, np.ndarray]:
        with threadpool_limits(limits=1, user_api="blas"):
            return generator(rng, shape, spacing)
    return wrapped


# --------------------------------------------------------------------------------------------
# geometry and random-shape primitives
# --------------------------------------------------------------------------------------------
class Grid:
    """Voxel-centre coordinates in mm, centred on the field of view, as broadcastable axes."""

    def __init__(self, shape: Shape, spacing: Spacing) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.axes = [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32)
                     for n, s in zip(self.shape, self.spacing)]

    def box(self, centre: tuple[float, ...], half: tuple[float, ...]) -> tuple[slice, ...]:
        """Voxel slices covering centre +- half (mm), clipped to the grid (possibly empty)."""
        slices = []
        for axis, c, h in zip(self.axes, centre, half):
            lo = int(np.searchsorted(axis, c - h, side="left"))
            hi = int(np.searchsorted(axis, c + h, side="right"))
            slices.append(slice(lo, max(lo, hi)))
        return tuple(slices)

    def coords(self, box: tuple[slice, ...] = (slice(None),) * 3) -> tuple[np.ndarray, ...]:
        z, y, x = (axis[s] for axis, s in zip(self.axes, box))
        return z[:, None, None], y[None, :, None], x[None, None, :]


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: Spacing,
                  corr_mm: float) -> np.ndarray:
    """Unit-variance random field with correlation length ~corr_mm (low-frequency texture).

    White noise on a coarse lattice, interpolated with a separable Gaussian kernel whose rows are
    normalised so that every voxel has variance exactly 1, whatever the grid size.
    """
    cell = corr_mm / 2.0
    weights = []
    for n, s in zip(shape, spacing):
        positions = np.arange(n) * s
        nodes = np.arange(-2 * cell, n * s + 2 * cell, cell)
        w = np.exp(-0.5 * ((positions[:, None] - nodes[None, :]) / cell) ** 2)
        weights.append((w / np.sqrt((w ** 2).sum(axis=1, keepdims=True))).astype(np.float32))
    field = rng.standard_normal(tuple(w.shape[1] for w in weights), dtype=np.float32)
    for axis, w in enumerate(weights):
        field = np.moveaxis(np.tensordot(w, field, axes=(1, axis)), 0, axis)
    return np.ascontiguousarray(field)


def blob_level(grid: Grid, rng: np.random.Generator, centre: tuple[float, float, float],
                radii: tuple[float, float, float], roughness: float = 0.0, angle_deg: float = 0.0,
                corr_mm: float | None = None) -> np.ndarray:
    """Signed pseudo-distance (mm, negative inside) to an irregular, in-plane rotated ellipsoid.

    The surface is an ellipsoid whose normalised radius is perturbed by a smooth random field, the
    usual way to get lobulated organ- and tumour-like shapes. Voxels outside the bounding box are
    +inf, so blobs combine with ``np.minimum`` (union) and shells are thresholds on the level.
    """
    level = np.full(grid.shape, np.inf, np.float32)
    reach = 1.3 + 3.0 * roughness
    in_plane = max(radii[1], radii[2]) * reach
    box = grid.box(centre, (radii[0] * reach, in_plane, in_plane))
    box_shape = tuple(s.stop - s.start for s in box)
    if min(box_shape) == 0:
        return level
    z, y, x = grid.coords(box)
    angle = math.radians(angle_deg)
    dy, dx = y - centre[1], x - centre[2]
    u = dy * math.cos(angle) + dx * math.sin(angle)
    v = -dy * math.sin(angle) + dx * math.cos(angle)
    radius = np.sqrt(((z - centre[0]) / radii[0]) ** 2 + (u / radii[1]) ** 2 + (v / radii[2]) ** 2)
    if roughness:
        corr = corr_mm if corr_mm is not None else float(np.mean(radii))
        radius = radius - roughness * smooth_field(rng, box_shape, grid.spacing, corr)
    level[box] = (radius - 1.0) * float(np.exp(np.mean(np.log(radii))))
    return level


def largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (int(np.argmax(sizes)) + 1)


class Canvas:
    """Tissue map and label map painted together, so an overriding structure also takes the label."""

    def __init__(self, shape: Shape) -> None:
        self.tissue = np.zeros(shape, np.uint8)
        self.label = np.zeros(shape, np.uint8)

    def paint(self, mask: np.ndarray, tissue: int, label: int = 0) -> None:
        np.copyto(self.tissue, np.uint8(tissue), where=mask)
        np.copyto(self.label, np.uint8(label), where=mask)

    def is_any(self, *tissues: int) -> np.ndarray:
        return np.isin(self.tissue, tissues)


def value_table(rng: np.random.Generator, ranges: dict[int, tuple[float, float]], size: int) -> np.ndarray:
    """Per-case lookup table tissue -> value, each drawn uniformly in its range (others 0)."""
    table = np.zeros(size, np.float32)
    for code in sorted(ranges):
        table[code] = rng.uniform(*ranges[code])
    return table


def constant_table(values: dict[int, float], size: int) -> np.ndarray:
    """Lookup table tissue -> fixed value (others 0)."""
    table = np.zeros(size, np.float32)
    for code, value in values.items():
        table[code] = value
    return table


def sigma_vox(sigma_mm: tuple[float, float, float], spacing: Spacing) -> tuple[float, ...]:
    return tuple(m / s for m, s in zip(sigma_mm, spacing))


def shift_in_plane(array: np.ndarray, shift_vox: tuple[float, float]) -> np.ndarray:
    """Sub-voxel (y, x) translation by linear interpolation, edges repeated (cheap ndimage.shift)."""
    for axis, shift in zip((1, 2), shift_vox):
        whole, frac = int(np.floor(shift)), float(shift - np.floor(shift))
        pad = abs(whole) + 1
        widths = [(0, 0)] * array.ndim
        widths[axis] = (pad, pad)
        padded = np.pad(array, widths, mode="edge")
        n = array.shape[axis]
        near = np.take(padded, np.arange(pad - whole, pad - whole + n), axis=axis)
        far = np.take(padded, np.arange(pad - whole - 1, pad - whole - 1 + n), axis=axis)
        array = (1 - frac) * near + frac * far
    return array


def ct_image(rng: np.random.Generator, grid: Grid, tissue: np.ndarray, mean: np.ndarray,
              texture: np.ndarray, texture_field: np.ndarray, noise_sd: float) -> np.ndarray:
    """CT in HU: sharp edges (slice-profile-sized blur only) and slightly correlated noise."""
    ct = mean[tissue] + texture[tissue] * texture_field
    ct = ndimage.gaussian_filter(ct, sigma_vox((1.2, 0.4, 0.4), grid.spacing))
    noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32),
                                    sigma_vox((0.0, 0.6, 0.6), grid.spacing))
    ct += noise * np.float32(noise_sd / max(float(noise.std()), 1e-6))
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16)
