"""Embedded synthetic datasets (``cmfnet synth``): stand-ins for the paper's NPC and WORD data.

The real data (a clinical CT+MR nasopharyngeal carcinoma cohort, the WORD abdominal CT set) are
not redistributable, so the default pipeline runs on phantoms that keep what makes those tasks
what they are:

- ``npc``: paired CT + T2-like MR of the head and neck on one grid, one class (tumour). As in the
  clinic the modalities are complementary: the tumour is a few HU above muscle on CT (under
  10-20 HU of noise) but bright on MR; MR has a multiplicative bias field, stronger relative
  (Rician) noise, blurrier edges and a sub-millimetre registration residual, and other bright
  structures (mucosa, lymph nodes, fat, CSF) that CT anatomy helps to rule out.
- ``word``: single-channel abdominal CT, seven organs with realistic relative HU, sizes and
  positions; gallbladder and pancreas small and low in contrast.

Geometry: voxel grids are axis-aligned at the origin with identity direction, i.e. ITK's LPS
convention: the x index grows towards the patient's left, y towards posterior, z towards
superior. A viewer in radiological convention therefore shows the liver on the image left.
Anatomy is defined in millimetres on a fixed field of view per kind; ``--shape`` changes the
resolution (spacing = field of view / shape), so small test grids hold the same anatomy. The
default shapes give the paper's NPC spacing (3.0, 1.27, 1.27) mm and a WORD-like abdominal crop
at (5.0, 3.0, 3.0) mm.

Every case draws from its own generator seeded by (seed, kind, case index), so a dataset of N+1
cases starts with the same N cases as a dataset of N.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from threadpoolctl import threadpool_limits

from cmfnet import __version__
from cmfnet.errors import InputError
from cmfnet.io import Geometry, atomic_dir, counted, make_dataset_json, recover_leftovers, write_image, write_json
from cmfnet.splits import synth_splits

Shape = tuple[int, int, int]
Spacing = tuple[float, float, float]
CaseGenerator = Callable[[np.random.Generator, Shape, Spacing], dict[str, np.ndarray]]

GENERATOR = "cmfnet synth"
MIN_SHAPE = (8, 32, 32)
CT_SOFT_TISSUE_WINDOW = [-160, 240]  # level 40, width 400 HU: keeps the few-HU tumour contrast
MR_NORMALIZATION = {"scheme": "zscore", "clip_percentiles": [0.5, 99.5]}


def _single_threaded_blas(generator: CaseGenerator) -> CaseGenerator:
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
class _Grid:
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


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: Spacing,
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


def _blob_level(grid: _Grid, rng: np.random.Generator, centre: tuple[float, float, float],
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
        radius = radius - roughness * _smooth_field(rng, box_shape, grid.spacing, corr)
    level[box] = (radius - 1.0) * float(np.exp(np.mean(np.log(radii))))
    return level


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (int(np.argmax(sizes)) + 1)


class _Canvas:
    """Tissue map and label map painted together, so an overriding structure also takes the label."""

    def __init__(self, shape: Shape) -> None:
        self.tissue = np.zeros(shape, np.uint8)
        self.label = np.zeros(shape, np.uint8)

    def paint(self, mask: np.ndarray, tissue: int, label: int = 0) -> None:
        np.copyto(self.tissue, np.uint8(tissue), where=mask)
        np.copyto(self.label, np.uint8(label), where=mask)

    def is_any(self, *tissues: int) -> np.ndarray:
        return np.isin(self.tissue, tissues)


def _table(rng: np.random.Generator, ranges: dict[int, tuple[float, float]], size: int) -> np.ndarray:
    """Per-case lookup table tissue -> value, each drawn uniformly in its range (others 0)."""
    table = np.zeros(size, np.float32)
    for code in sorted(ranges):
        table[code] = rng.uniform(*ranges[code])
    return table


def _constants(values: dict[int, float], size: int) -> np.ndarray:
    """Lookup table tissue -> fixed value (others 0)."""
    table = np.zeros(size, np.float32)
    for code, value in values.items():
        table[code] = value
    return table


def _sigma_vox(sigma_mm: tuple[float, float, float], spacing: Spacing) -> tuple[float, ...]:
    return tuple(m / s for m, s in zip(sigma_mm, spacing))


def _shift_in_plane(array: np.ndarray, shift_vox: tuple[float, float]) -> np.ndarray:
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


def _ct_image(rng: np.random.Generator, grid: _Grid, tissue: np.ndarray, mean: np.ndarray,
              texture: np.ndarray, texture_field: np.ndarray, noise_sd: float) -> np.ndarray:
    """CT in HU: sharp edges (slice-profile-sized blur only) and slightly correlated noise."""
    ct = mean[tissue] + texture[tissue] * texture_field
    ct = ndimage.gaussian_filter(ct, _sigma_vox((1.2, 0.4, 0.4), grid.spacing))
    noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32),
                                    _sigma_vox((0.0, 0.6, 0.6), grid.spacing))
    ct += noise * np.float32(noise_sd / max(float(noise.std()), 1e-6))
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16)


# --------------------------------------------------------------------------------------------
# NPC: paired CT + T2 MR of the nasopharynx
# --------------------------------------------------------------------------------------------
NPC_LABELS = {"background": 0, "tumour": 1}
NPC_FOV_MM = (96.0, 162.56, 162.56)  # default shape (32, 128, 128) at (3.0, 1.27, 1.27) mm
NPC_DEFAULT_SHAPE: Shape = (32, 128, 128)
# tissue codes of the head-and-neck phantom
NPC_TISSUES = 9
(H_AIR, H_FAT, H_MUSCLE, H_MUCOSA, H_NODE, H_BONE, H_MARROW, H_CSF, H_TUMOUR) = range(NPC_TISSUES)
NPC_MIN_TUMOUR_VOXELS = 10


@_single_threaded_blas
def npc_case(rng: np.random.Generator, shape: Shape, spacing: Spacing) -> dict[str, np.ndarray]:
    """One head-and-neck case: {"CT": HU int16, "MR": T2-like int16, "label": uint8}."""
    grid = _Grid(shape, spacing)
    canvas = _Canvas(grid.shape)
    z, y, x = grid.coords()

    # head outline: an egg narrowing towards the face, irregular, slightly tapered in z
    scale = rng.uniform(0.92, 1.04)
    semi_y, semi_x = 80.0 * scale, 68.0 * scale * rng.uniform(0.95, 1.05)
    centre_y = rng.uniform(0.0, 8.0)
    rel_y = (y - centre_y) / semi_y
    half_width = semi_x * (1 - 0.22 * np.clip(-rel_y, 0, 1) ** 2) * (1 + 0.04 * z / 48.0)
    radius = np.sqrt(rel_y ** 2 + (x / half_width) ** 2)
    radius = radius - 0.03 * _smooth_field(rng, grid.shape, grid.spacing, 40.0)
    body_level = (radius - 1.0) * semi_x
    body = body_level < 0
    canvas.paint(body, H_MUSCLE)
    canvas.paint(body & (body_level > -rng.uniform(4.0, 9.0)), H_FAT)  # subcutaneous fat

    # parapharyngeal fat spaces, lateral to the nasopharynx
    for side in (-1, 1):
        fat = _blob_level(grid, rng, (12 + rng.uniform(-4, 4), centre_y - 2 + rng.uniform(-3, 3),
                                      side * rng.uniform(23, 29)),
                          (16.0, rng.uniform(6, 9), rng.uniform(5, 7)), roughness=0.25)
        canvas.paint((fat < 0) & body, H_FAT)

    # lymph nodes: T2-bright like the tumour but away from the nasopharyngeal wall
    for _ in range(int(rng.integers(2, 6))):
        side = rng.choice([-1, 1])
        if rng.random() < 0.4:  # retropharyngeal
            centre = (rng.uniform(0, 25), centre_y + rng.uniform(14, 20), side * rng.uniform(14, 20))
        else:  # level II
            centre = (rng.uniform(-40, -5), centre_y + rng.uniform(5, 25), side * rng.uniform(38, 50))
        r = rng.uniform(3.0, 8.0)
        node = _blob_level(grid, rng, centre, (r * 1.3, r, r * rng.uniform(0.8, 1.2)), roughness=0.1)
        canvas.paint((node < 0) & body, H_NODE)

    # bone: vertebra/clivus with its arch around the spinal canal, jaw arch, pterygoid plates
    vertebra_y = centre_y + 30 + rng.uniform(-3, 3)
    vertebra = _blob_level(grid, rng, (0.0, vertebra_y, rng.uniform(-2, 2)),
                           (300.0, rng.uniform(11, 14), rng.uniform(15, 18)), roughness=0.05)
    canal_y = vertebra_y + 22
    canal = _blob_level(grid, rng, (0.0, canal_y, 0.0), (300.0, 7.0, 8.0))
    arch = (canal >= 0) & (canal < 4.5)
    jaw_y = centre_y - 22 + rng.uniform(-3, 3)
    jaw_radius = np.sqrt(((y - jaw_y) / 48.0) ** 2 + (x / 45.0) ** 2) * np.ones_like(z)
    jaw = (jaw_radius > 1 - 5.0 / 45.0) & (jaw_radius < 1) & (y < centre_y + 5)
    bone = (vertebra < 0) | arch | jaw
    for side in (-1, 1):
        plate = _blob_level(grid, rng, (15.0, centre_y - 12, side * rng.uniform(22, 26)),
                            (18.0, 8.0, 3.0), roughness=0.1)
        bone |= plate < 0
    canvas.paint(bone & body, H_BONE)
    canvas.paint((vertebra < -3.0) & body, H_MARROW)  # cancellous core inside the cortex
    canvas.paint((canal < 0) & body, H_CSF)

    # air: nasopharynx, oropharynx below, nasal cavities in front; mucosa lines them
    nasopharynx = (18.0, centre_y - 8 + rng.uniform(-3, 3), rng.uniform(-2, 2))
    np_radii = (22.0, 9.0 * rng.uniform(0.8, 1.2), 14.0 * rng.uniform(0.8, 1.2))
    airway = _blob_level(grid, rng, nasopharynx, np_radii, roughness=0.15, corr_mm=15.0)
    airway = np.minimum(airway, _blob_level(grid, rng, (-22.0, centre_y - 4, 0.0),
                                            (28.0, 7.0 * rng.uniform(0.8, 1.2), 10.0),
                                            roughness=0.15, corr_mm=15.0))
    for side in (-1, 1):
        airway = np.minimum(airway, _blob_level(grid, rng, (22.0, centre_y - 36, side * 7.0),
                                                (16.0, 24.0, 4.5), roughness=0.15, corr_mm=15.0))
    inside = body & (body_level < -8.0)
    mucosa = inside & (airway >= 0) & (airway < rng.uniform(2.0, 3.5)) & canvas.is_any(
        H_MUSCLE, H_FAT, H_NODE)
    canvas.paint(mucosa, H_MUCOSA)
    canvas.paint(inside & (airway < 0), H_AIR)

    _paint_npc_tumour(rng, grid, canvas, body, nasopharynx, np_radii)

    ct_mean = _table(rng, {H_AIR: (-1000, -1000), H_FAT: (-110, -80), H_MUSCLE: (40, 60),
                           H_BONE: (700, 1000), H_MARROW: (250, 400), H_CSF: (5, 15)},
                     NPC_TISSUES)
    muscle = ct_mean[H_MUSCLE]
    ct_mean[H_MUCOSA] = muscle + rng.uniform(5, 15)   # enhancing mucosa
    ct_mean[H_NODE] = muscle + rng.uniform(0, 10)
    ct_mean[H_TUMOUR] = muscle + rng.uniform(3, 12)   # barely above muscle on CT
    # one tissue heterogeneity seen by both modalities, as the same anatomy would be
    texture_field = _smooth_field(rng, grid.shape, grid.spacing, 12.0)
    ct_texture = _constants({H_FAT: 4, H_MUSCLE: 4, H_MUCOSA: 4, H_NODE: 4, H_BONE: 60, H_MARROW: 30,
                             H_CSF: 2, H_TUMOUR: 4}, NPC_TISSUES)
    ct = _ct_image(rng, grid, canvas.tissue, ct_mean, ct_texture, texture_field, rng.uniform(10, 20))

    # T2: muscle 1; fat, CSF, mucosa, nodes and tumour bright; bone and air dark
    mr_mean = _table(rng, {H_AIR: (0, 0), H_FAT: (2.1, 2.6), H_MUSCLE: (0.9, 1.1),
                           H_MUCOSA: (1.6, 2.0), H_NODE: (1.5, 1.9), H_BONE: (0.1, 0.25),
                           H_MARROW: (1.1, 1.5), H_CSF: (2.8, 3.3), H_TUMOUR: (1.6, 2.0)},
                     NPC_TISSUES)
    mr_texture = _constants({H_FAT: 0.08, H_MUSCLE: 0.05, H_MUCOSA: 0.08, H_NODE: 0.06, H_BONE: 0.03,
                             H_MARROW: 0.08, H_CSF: 0.05, H_TUMOUR: 0.08}, NPC_TISSUES)
    mr = _mr_image(rng, grid, canvas.tissue, mr_mean, mr_texture, texture_field)
    return {"CT": ct, "MR": mr, "label": canvas.label}


def _paint_npc_tumour(rng: np.random.Generator, grid: _Grid, canvas: _Canvas, body: np.ndarray,
                      nasopharynx: tuple[float, float, float],
                      np_radii: tuple[float, float, float]) -> None:
    """An irregular tumour arising from the posterior/lateral nasopharyngeal wall.

    Sizes are log-uniform in equivalent radius (7-26 mm, i.e. ~1.4-74 ml), so small tumours are
    common. The tumour fills the lumen where it bulges into it and spares bone and the spinal canal.
    """
    z, y, _ = grid.coords()
    wall = (canvas.tissue == H_MUCOSA) & (y >= nasopharynx[1] - 2) & (
        np.abs(z - nasopharynx[0]) < 0.6 * np_radii[0])
    candidates = np.flatnonzero(wall)
    if candidates.size:
        iz, iy, ix = np.unravel_index(candidates[rng.integers(candidates.size)], grid.shape)
        seed_point = np.array([grid.axes[0][iz], grid.axes[1][iy], grid.axes[2][ix]], float)
    else:  # grids too coarse to resolve the mucosa: start from the posterior wall
        seed_point = np.array([nasopharynx[0], nasopharynx[1] + np_radii[1], nasopharynx[2]])
    outward = seed_point[1:] - np.asarray(nasopharynx[1:])
    outward /= max(float(np.linalg.norm(outward)), 1e-6)

    spared = canvas.is_any(H_BONE, H_MARROW, H_CSF) | ~body
    radius_eq = float(np.exp(rng.uniform(np.log(7.0), np.log(26.0))))
    for _ in range(8):
        aspect = np.exp(rng.normal(0.0, 0.2, 3))
        radii = tuple(radius_eq * aspect / np.prod(aspect) ** (1 / 3))
        centre = seed_point.copy()
        centre[1:] += outward * 0.35 * min(radii[1], radii[2])
        level = _blob_level(grid, rng, tuple(centre), radii, roughness=0.3,
                            angle_deg=rng.uniform(0, 180), corr_mm=max(radius_eq, 6.0))
        tumour = _largest_component((level < 0) & ~spared)
        if tumour.sum() >= NPC_MIN_TUMOUR_VOXELS:
            break
        radius_eq *= 1.3  # too small to be seen on this grid: grow it
    canvas.paint(tumour, H_TUMOUR, label=1)


def _mr_image(rng: np.random.Generator, grid: _Grid, tissue: np.ndarray, mean: np.ndarray,
              texture: np.ndarray, texture_field: np.ndarray) -> np.ndarray:
    """T2-like MR resampled onto the CT grid: registration residual, blur, bias field, Rician noise."""
    mr = mean[tissue] + texture[tissue] * texture_field
    shift_mm = rng.uniform(-1.0, 1.0, 2)
    mr = _shift_in_plane(mr, (shift_mm[0] / grid.spacing[1], shift_mm[1] / grid.spacing[2]))
    mr = ndimage.gaussian_filter(mr, _sigma_vox((1.5, 1.1, 1.1), grid.spacing))
    bias = np.exp(rng.uniform(0.12, 0.25) * _smooth_field(rng, grid.shape, grid.spacing, 120.0))
    scale = rng.uniform(250, 400)
    signal = mr * bias * np.float32(scale)
    noise_sd = np.float32(rng.uniform(0.05, 0.09) * scale)
    real = signal + noise_sd * rng.standard_normal(grid.shape, dtype=np.float32)
    imaginary = noise_sd * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.clip(np.rint(np.hypot(real, imaginary)), 0, 32767).astype(np.int16)


# --------------------------------------------------------------------------------------------
# WORD: abdominal CT, seven organs
# --------------------------------------------------------------------------------------------
WORD_LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4,
               "stomach": 5, "gallbladder": 6, "pancreas": 7}
WORD_FOV_MM = (200.0, 384.0, 384.0)  # default shape (40, 128, 128) at (5.0, 3.0, 3.0) mm
WORD_DEFAULT_SHAPE: Shape = (40, 128, 128)
# tissue codes of the abdominal phantom
WORD_TISSUES = 18
(A_AIR, A_FAT, A_MUSCLE, A_BOWEL, A_GAS, A_BONE, A_CORTICAL, A_CSF, A_AORTA, A_IVC, A_LIVER,
 A_SPLEEN, A_CORTEX, A_MEDULLA, A_STOMACH_WALL, A_STOMACH_FLUID, A_GALLBLADDER,
 A_PANCREAS) = range(WORD_TISSUES)


@_single_threaded_blas
def word_case(rng: np.random.Generator, shape: Shape, spacing: Spacing) -> dict[str, np.ndarray]:
    """One abdominal CT case: {"CT": HU int16, "label": uint8} with the seven WORD organs."""
    grid = _Grid(shape, spacing)
    canvas = _Canvas(grid.shape)
    z, y, x = grid.coords()
    s = rng.uniform(0.88, 1.05)  # body habitus

    def jitter(*centre: float, spread: float = 8.0) -> tuple[float, float, float]:
        c = np.asarray(centre) + rng.uniform(-spread, spread, 3)
        return float(c[0]), float(c[1] * s), float(c[2] * s)

    def sized(*radii: float) -> tuple[float, float, float]:
        f = rng.uniform(0.9, 1.1)
        return float(radii[0] * f), float(radii[1] * f * s), float(radii[2] * f * s)

    # body: a superellipse flattened at the back. The level is the distance to the skin (mm, first
    # order: radius excess over its gradient), so fat and muscle layers get true thicknesses.
    semi_x, semi_y = 160.0 * s, 115.0 * s
    power = 2.3
    semi_y_side = np.where(y > 0, 0.88 * semi_y, semi_y)
    rel_x, rel_y = np.abs(x) / semi_x + 1e-6, np.abs(y) / semi_y_side + 1e-6
    radius = (rel_x ** power + rel_y ** power) ** (1 / power)
    gradient = radius ** (1 - power) * np.hypot(rel_x ** (power - 1) / semi_x,
                                                rel_y ** (power - 1) / semi_y_side)
    body_level = (radius - 1.0) / gradient + 4.0 * _smooth_field(rng, grid.shape, grid.spacing, 60.0)
    subcutaneous = rng.uniform(10.0, 35.0) * np.where(y > 0, 0.5, 1.0)  # thinner at the back
    body = body_level < 0
    cavity = body_level < -(subcutaneous + 10.0)
    canvas.paint(body, A_FAT)
    canvas.paint(body & ~cavity & (body_level < -subcutaneous), A_MUSCLE)
    mesentery = _smooth_field(rng, grid.shape, grid.spacing, 25.0)
    fat_threshold = np.where(y > 20, -0.8, 0.3)  # retroperitoneum is mostly fat
    canvas.paint(cavity & (mesentery <= fat_threshold), A_BOWEL)
    # tissue heterogeneity; its rare peaks also place gas bubbles in the bowel
    texture_field = _smooth_field(rng, grid.shape, grid.spacing, 12.0)
    canvas.paint(cavity & (mesentery <= fat_threshold) & (texture_field > 2.2), A_GAS)

    organs = [
        # liver: right lobe plus the left lobe across the midline, under the diaphragm
        (A_LIVER, 1, np.minimum(
            _blob_level(grid, rng, jitter(35, -15, -70), sized(62, 80, 68), 0.08, corr_mm=60),
            _blob_level(grid, rng, jitter(50, -45, 15), sized(35, 30, 45), 0.08, corr_mm=40))),
        # spleen: left, posterior, high; long axis along the ribs
        (A_SPLEEN, 2, _blob_level(grid, rng, jitter(40, 45, 100), sized(45, 45, 22), 0.1,
                                  angle_deg=rng.uniform(30, 50))),
        # stomach: left upper quadrant, anterior
        (A_STOMACH_WALL, 5, _blob_level(grid, rng, jitter(45, -30, 55), sized(48, 35, 45), 0.15,
                                        angle_deg=rng.uniform(-20, 20))),
    ]
    for tissue, label, level in organs:
        canvas.paint((level < 0) & cavity, tissue, label)
    stomach = organs[2][2]
    lumen = (stomach < -5.0) & cavity
    canvas.paint(lumen, A_STOMACH_FLUID, 5)
    gas_line = -30 * s + rng.uniform(-0.2, 0.6) * 35 * s  # gas rises anteriorly (patient supine)
    canvas.paint(lumen & (y < gas_line), A_GAS, 5)

    # kidneys: paravertebral, the right one lower; cortex brighter than medulla
    for label, side, z_centre in ((3, 1, -12.0), (4, -1, -30.0)):
        level = _blob_level(grid, rng, jitter(z_centre, 55, side * 68, spread=6.0),
                            sized(55, 24, 28), 0.05, angle_deg=side * rng.uniform(15, 30))
        kidney = (level < 0) & cavity
        canvas.paint(kidney, A_CORTEX, label)
        canvas.paint(kidney & (level < -6.0), A_MEDULLA, label)

    # pancreas: head right of the midline by the duodenum, body draped over the spine, tail
    # towards the splenic hilum behind the stomach; thicker at the head, lobulated
    canvas.paint(_pancreas(grid, rng, s) & cavity, A_PANCREAS, 7)
    # gallbladder: under the liver's inferior surface, anterior
    gallbladder = _blob_level(grid, rng, jitter(-5, -45, -50, spread=5.0), sized(30, 16, 14), 0.08,
                              angle_deg=rng.uniform(-30, 30))
    canvas.paint((gallbladder < 0) & cavity, A_GALLBLADDER, 6)

    # retroperitoneal structures override organs they touch: vessels, spine, psoas, back muscles
    canvas.paint(body & (_blob_level(grid, rng, (0, 22 * s, 12 * s), (400, 11, 11)) < 0), A_AORTA)
    canvas.paint(body & (_blob_level(grid, rng, (0, 18 * s, -22 * s), (400, 10, 13)) < 0), A_IVC)
    psoas_radius = 8.0 + 8.0 * np.clip(-z / 100.0, 0, 1)  # psoas grows caudally
    for side in (-1, 1):
        psoas = ((y - 45 * s) / (psoas_radius + 2)) ** 2 + ((x - side * 35 * s) / psoas_radius) ** 2 < 1
        back = _blob_level(grid, rng, (0, 80 * s, side * 38 * s), (400, 18 * s, 28 * s), 0.05) < 0
        canvas.paint(body & (psoas | back), A_MUSCLE)
    vertebra = _blob_level(grid, rng, (0, 50 * s, 0), (400, 16, 21), 0.03)
    canal = _blob_level(grid, rng, (0, 78 * s, 0), (400, 8, 9))
    canvas.paint(body & (vertebra < 0), A_CORTICAL)
    canvas.paint(body & (vertebra < -3.0), A_BONE)
    canvas.paint(body & (canal >= 0) & (canal < 5.0), A_CORTICAL)
    canvas.paint(body & (canal < 0), A_CSF)
    # lower ribs: sloping bands in the lateral and posterior wall, upper part of the field of view
    rib_band = body & (body_level < -subcutaneous + 2.0) & (body_level > -subcutaneous - 8.0)
    rib_phase = np.sin(2 * np.pi * (z + 0.25 * y) / 24.0 + rng.uniform(0, 2 * np.pi))
    canvas.paint(rib_band & (rib_phase > 0.55) & (z > -40) & (y > -50 * s), A_CORTICAL)

    hu = _table(rng, {
        A_AIR: (-1000, -1000), A_FAT: (-110, -90), A_MUSCLE: (45, 55), A_BOWEL: (25, 40),
        A_GAS: (-950, -850), A_BONE: (200, 350), A_CORTICAL: (600, 900), A_CSF: (5, 15),
        A_AORTA: (150, 200), A_IVC: (110, 140), A_LIVER: (55, 65), A_SPLEEN: (45, 52),
        A_CORTEX: (140, 170), A_MEDULLA: (90, 120), A_STOMACH_WALL: (35, 45),
        A_STOMACH_FLUID: (5, 20), A_GALLBLADDER: (0, 18), A_PANCREAS: (40, 50)}, WORD_TISSUES)
    texture = np.full(WORD_TISSUES, 3.0, np.float32)  # HU of low-frequency heterogeneity
    texture[[A_AIR, A_GAS]] = 0.0
    texture[[A_BONE, A_CORTICAL]] = 40.0
    texture[A_LIVER] = 5.0
    ct = _ct_image(rng, grid, canvas.tissue, hu, texture, texture_field, rng.uniform(10, 20))
    return {"CT": ct, "label": canvas.label}


def _pancreas(grid: _Grid, rng: np.random.Generator, s: float) -> np.ndarray:
    """A bent, tapering tube from the pancreatic head (patient right) to the tail (left)."""
    head_x, tail_x = -28 * s + rng.uniform(-5, 5), 78 * s + rng.uniform(-5, 5)
    mid_x, half_length = (head_x + tail_x) / 2, (tail_x - head_x) / 2
    offset_y, offset_z, rise_z = rng.uniform(-4, 4), rng.uniform(-8, 2), rng.uniform(5, 15)
    thickness = rng.uniform(0.85, 1.15)
    box = grid.box((offset_z, 10 * s + offset_y, mid_x), (60.0, 60 * s, half_length + 2.0))
    z, y, x = grid.coords(box)
    u = (x - mid_x) / half_length  # -1 at the head, +1 at the tail
    centre_y = (-8 + 22 * u + 18 * u ** 2) * s + offset_y  # anterior where it crosses the spine
    centre_z = offset_z + rise_z * u                       # tail slightly higher
    local = thickness * (1.3 - 0.35 * u)                   # the head is the thickest part
    radius = np.sqrt(u ** 2 + ((y - centre_y) / (10 * local)) ** 2 + ((z - centre_z) / (13 * local)) ** 2)
    mask = np.zeros(grid.shape, bool)
    if radius.size:
        mask[box] = radius - 0.12 * _smooth_field(rng, radius.shape, grid.spacing, 15.0) < 1
    return mask


# --------------------------------------------------------------------------------------------
# datasets and CLI
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kind:
    code: int  # part of each case's seed, so npc and word cases never share random streams
    channels: tuple[str, ...]
    labels: dict[str, int]
    fov_mm: tuple[float, float, float]
    default_shape: Shape
    generator: CaseGenerator
    description: str


KINDS: dict[str, _Kind] = {
    "npc": _Kind(1, ("CT", "MR"), NPC_LABELS, NPC_FOV_MM, NPC_DEFAULT_SHAPE, npc_case,
                 "Synthetic paired CT + T2 MR head-and-neck phantoms with one nasopharyngeal "
                 "tumour (stand-in for the paper's NPC cohort)."),
    "word": _Kind(2, ("CT",), WORD_LABELS, WORD_FOV_MM, WORD_DEFAULT_SHAPE, word_case,
                  "Synthetic abdominal CT phantoms with the seven WORD organs (stand-in for WORD)."),
}


def spacing_for(kind: str, shape: Shape) -> Spacing:
    """Voxel spacing (mm, z y x) that fits the kind's fixed field of view into ``shape``."""
    fov = _kind(kind).fov_mm
    return tuple(round(f / n, 6) for f, n in zip(fov, shape))  # type: ignore[return-value]


def case_rng(kind: str, seed: int, index: int) -> np.random.Generator:
    """The random stream of one case: depends only on (seed, kind, case index)."""
    return np.random.default_rng([int(seed), _kind(kind).code, int(index)])


def _kind(kind: str) -> _Kind:
    if kind not in KINDS:
        raise InputError("--kind", f"unknown synthetic dataset '{kind}' (expected one of {sorted(KINDS)})")
    return KINDS[kind]


MARKER = ".cmfnet-synth"


def _check_out(out: Path) -> None:
    """Refuse to replace anything but an earlier synthetic dataset: atomic_dir swaps whole folders."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if (out / MARKER).is_file():  # dataset.json may be gone: Snakemake deletes outputs before a rerun
            return
        try:
            provenance = json.loads((out / "dataset.json").read_text()).get("provenance", {})
        except (OSError, ValueError, AttributeError):
            provenance = {}
        if not isinstance(provenance, dict) or provenance.get("generator") != GENERATOR:
            raise InputError(out, "exists and is not a dataset made by 'cmfnet synth'; "
                                  "refusing to replace it")


def synthesize(kind: str, n_cases: int, out: Path, seed: int = 0,
               shape: tuple[int, int, int] | None = None, folds: int = 5) -> Path:
    """Write a complete synthetic dataset folder (images, labels, dataset.json) atomically.

    ``folds`` applies to ``npc`` (k-fold cross-validation); ``word`` uses WORD's fixed split.
    """
    spec = _kind(kind)
    shape = tuple(int(n) for n in (shape or spec.default_shape))  # type: ignore[assignment]
    if len(shape) != 3 or any(n < m for n, m in zip(shape, MIN_SHAPE)):
        raise InputError("--shape", f"expected three sizes Z Y X of at least {MIN_SHAPE}, got {shape}")
    if n_cases < 1:
        raise InputError("--cases", f"expected a positive number of cases, got {n_cases}")
    out = Path(out)
    for note in recover_leftovers(out):
        print(f"note: {note}", file=sys.stderr)
    _check_out(out)
    spacing = spacing_for(kind, shape)
    width = max(3, len(str(n_cases - 1)))
    cases = [f"{kind}_{i:0{width}d}" for i in range(n_cases)]
    splits = synth_splits(kind, cases, folds)
    geometry = Geometry.default(shape, spacing)
    normalization = {"CT": {"scheme": "ct", "window": list(CT_SOFT_TISSUE_WINDOW)}}
    if "MR" in spec.channels:
        normalization["MR"] = dict(MR_NORMALIZATION)
    meta = make_dataset_json(
        f"synth_{kind}", list(spec.channels), spec.labels, cases, spacing, splits,
        description=spec.description,
        orientation="LPS: x index towards patient left, y towards posterior, z towards superior",
        normalization=normalization,
        provenance={"generator": GENERATOR, "kind": kind, "seed": int(seed),
                    "shape": list(shape), "cmfnet_version": __version__})
    with atomic_dir(out) as tmp:
        for index, case in enumerate(cases):
            arrays = spec.generator(case_rng(kind, seed, index), shape, spacing)  # type: ignore[arg-type]
            for channel, name in enumerate(spec.channels):
                write_image(arrays[name], tmp / "imagesTr" / f"{case}_{channel:04d}.nii.gz", geometry)
            write_image(arrays["label"], tmp / "labelsTr" / f"{case}.nii.gz", geometry)
        write_json(meta, tmp / "dataset.json")
        (tmp / MARKER).write_text("made by cmfnet synth; safe for cmfnet synth to replace\n")
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="write an embedded synthetic dataset (npc: CT+MR tumour, word: abdominal CT)",
        description="Write a synthetic dataset in the suite's format: paired CT+MR nasopharyngeal "
                    "tumour phantoms (npc) or abdominal CT organ phantoms (word).")
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument("--cases", required=True, type=int, metavar="N", help="number of cases")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="grid size; the field of view is fixed, so this sets the spacing "
                             "(default npc 32 128 128, word 40 128 128)")
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="cross-validation folds, npc only (default 5); word uses its 100/20/30 split")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.kind == "word" and args.folds is not None:
        raise InputError("--folds", "word uses WORD's fixed train/val/test split; "
                                    "--folds applies to npc only")
    out = synthesize(args.kind, args.cases, args.out, seed=args.seed,
                     shape=tuple(args.shape) if args.shape else None,
                     folds=args.folds if args.folds is not None else 5)
    spec = KINDS[args.kind]
    shape = tuple(args.shape) if args.shape else spec.default_shape
    spacing = spacing_for(args.kind, shape)
    print(f"synth {args.kind}: {counted(args.cases, 'case')} -> {out} | channels {', '.join(spec.channels)} | "
          f"classes {', '.join(spec.labels)} | spacing {' x '.join(f'{v:g}' for v in spacing)} mm "
          f"(z y x) | shape {' x '.join(str(n) for n in shape)}")
    return 0
