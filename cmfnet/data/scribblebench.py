"""The ``scribblebench`` scribble variant: ScribbleBench's protocol, re-implemented.

ScribbleBench (MIC-DKFZ; "Embarrassingly simple scribble supervision for 3D medical
segmentation", arXiv 2403.12834) scribbles every axial slice (axis 0) and every class on it,
background included. Its configuration (``scribblebench/scribble_conf.yml``) gives each chosen
region two strokes, three pixels thick:

* an **interior** stroke: a quadratic B-spline through four control points inside the region.
  Each control point after the first is a random region pixel, pulled back along the segment
  from the previous point to a random spot before the segment first leaves the region, so the
  control polygon stays inside even a concave region;
* a **partial-boundary** stroke: the region is eroded by a disk of radius ``half_thickness +
  U{1..4}`` and a piece of the eroded region's contour, 7-15 % of the contour long, is taken
  around a point drawn with probability proportional to the (smoothed) curvature, where an
  annotator would trace a corner.

Per slice and class, one 2D connected component is scribbled, drawn with probability
proportional to its area. Strokes are dilated to the thickness and clipped to their component,
so a scribble of class k always lies inside label == k. ``slice_fraction`` (the configuration's
``num_slice_range``, 1.0 there) scribbles that fraction of the slices that hold foreground and
of those that hold only background.

Deviations, none of which changes what a stroke is: the boundary piece is taken from one
contour (the one around the drawn point) and drawn as a connected polyline, where the reference
concatenates all contours and keeps the largest piece of the rasterised points; the spline is
evaluated with SciPy rather than geomdl, and the control polygon is kept inside by a raster walk
rather than a Shapely polygon intersection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.interpolate import BSpline
from skimage.draw import line
from skimage.measure import find_contours
from skimage.morphology import disk

from cmfnet.data.io import IGNORE
from cmfnet.data.validate import labelmap_problem

EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


@dataclass(frozen=True)
class ScribbleBenchOptions:
    """The generator's settings, ScribbleBench's defaults; coverage.json records them."""

    thickness: int = 3  # stroke width in pixels, odd
    control_points: int = 4  # of the interior B-spline (degree 2)
    erosion_extra: tuple[int, int] = (1, 4)  # boundary stroke: disk radius = thickness // 2 + U{a..b}
    boundary_length: tuple[float, float] = (0.07, 0.15)  # share of the eroded contour
    slice_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.thickness < 1 or self.thickness % 2 == 0:
            raise ValueError(f"thickness must be an odd number >= 1, got {self.thickness}")
        if self.control_points < 3:
            raise ValueError(f"control_points must be >= 3 for a quadratic spline, got {self.control_points}")
        low, high = self.erosion_extra
        if not 0 <= low <= high:
            raise ValueError(f"erosion_extra must be 0 <= low <= high, got {self.erosion_extra}")
        short, long = self.boundary_length
        if not 0 < short <= long <= 1:
            raise ValueError(f"boundary_length must be 0 < low <= high <= 1, got {self.boundary_length}")
        if not 0 < self.slice_fraction <= 1:
            raise ValueError(f"slice_fraction must be in (0, 1], got {self.slice_fraction}")


def _polyline(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Rasterise consecutive (row, col) points as connected line segments."""
    out = np.zeros(shape, dtype=bool)
    pixels = np.clip(np.round(points).astype(int), 0, np.array(shape) - 1)
    out[pixels[0, 0], pixels[0, 1]] = True
    for (r0, c0), (r1, c1) in zip(pixels[:-1], pixels[1:]):
        rows, cols = line(r0, c0, r1, c1)
        out[rows, cols] = True
    return out


def _inside_until(start: np.ndarray, end: np.ndarray, region: np.ndarray) -> float:
    """The fraction of the segment start -> end walked before it first leaves ``region``."""
    steps = max(2, int(np.ceil(np.abs(end - start).max())) * 2 + 1)
    for i, t in enumerate(np.linspace(0.0, 1.0, steps)):
        r, c = np.round(start + t * (end - start)).astype(int)
        if not region[r, c]:
            return max(0.0, (i - 1) / (steps - 1))
    return 1.0


def _control_points(region: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    pixels = np.argwhere(region).astype(float)
    points = [pixels[rng.integers(len(pixels))]]
    while len(points) < count:
        target = pixels[rng.integers(len(pixels))]
        reach = _inside_until(points[-1], target, region)
        points.append(points[-1] + rng.uniform(0.0, reach) * (target - points[-1]))
    return np.array(points)


def interior_stroke(region: np.ndarray, rng: np.random.Generator, control_points: int = 4) -> np.ndarray:
    """A quadratic, clamped B-spline through random control points kept inside ``region``."""
    points = _control_points(region, control_points, rng)
    degree = 2
    inner = np.linspace(0.0, 1.0, control_points - degree + 1)[1:-1]
    knots = np.concatenate([np.zeros(degree + 1), inner, np.ones(degree + 1)])
    length = np.linalg.norm(np.diff(points, axis=0), axis=1).sum()
    curve = BSpline(knots, points, degree)(np.linspace(0.0, 1.0, max(2, int(4 * length) + 2)))
    return _polyline(curve, region.shape) & region


def _curvature(contour: np.ndarray) -> np.ndarray:
    """|curvature| along a closed contour, smoothed; a weight for where the stroke is centred."""
    d1 = np.gradient(contour, axis=0)
    d2 = np.gradient(d1, axis=0)
    speed = np.maximum(np.hypot(d1[:, 0], d1[:, 1]), 1e-6)
    kappa = np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) / speed ** 3
    kappa = ndimage.gaussian_filter1d(kappa, sigma=1.0, mode="wrap")
    return kappa + 1e-6  # a circle (constant curvature) gives every point the same weight


def boundary_stroke(region: np.ndarray, rng: np.random.Generator, radius: int,
                    length_share: tuple[float, float]) -> np.ndarray | None:
    """A piece of the contour of ``region`` eroded by a disk of ``radius``; None if it vanishes."""
    eroded = ndimage.binary_erosion(region, structure=disk(radius))
    if not eroded.any():
        return None
    contours = find_contours(np.pad(eroded, 1).astype(float), 0.5)
    weights = [_curvature(c) for c in contours]
    chosen = rng.choice(len(contours), p=np.array([w.sum() for w in weights]) / sum(w.sum() for w in weights))
    contour, weight = contours[chosen] - 1.0, weights[chosen]
    short, long = (max(1, int(len(contour) * share)) for share in length_share)
    size = int(rng.integers(short, long + 1))
    centre = int(rng.choice(len(contour), p=weight / weight.sum()))
    piece = np.take(contour, np.arange(centre - size // 2, centre - size // 2 + size), axis=0, mode="wrap")
    return _polyline(piece, region.shape)


def _region_strokes(region: np.ndarray, rng: np.random.Generator, options: ScribbleBenchOptions) -> np.ndarray:
    half = options.thickness // 2
    strokes = interior_stroke(region, rng, options.control_points)
    low, high = options.erosion_extra
    boundary = boundary_stroke(region, rng, half + int(rng.integers(low, high + 1)), options.boundary_length)
    if boundary is not None:
        strokes |= boundary
    if half:
        strokes = ndimage.binary_dilation(strokes, structure=disk(half))
    return strokes & region


def _chosen_slices(label: np.ndarray, fraction: float, rng: np.random.Generator) -> list[int]:
    """All slices at fraction 1; else that share of the foreground and of the background-only ones."""
    holds_foreground = (label > 0).any(axis=(1, 2))
    chosen: list[int] = []
    for group in (np.flatnonzero(holds_foreground), np.flatnonzero(~holds_foreground)):
        keep = int(len(group) * fraction)
        chosen += rng.choice(group, size=keep, replace=False).tolist() if keep < len(group) else group.tolist()
    return sorted(chosen)


def simulate_scribblebench(label: np.ndarray, num_classes: int, rng: np.random.Generator,
                           **options: Any) -> np.ndarray:
    """The ``scribblebench`` variant: uint8, 0 background, k class k, 255 unlabelled.

    ``num_classes`` includes background and comes from the dataset; ``options`` are
    :class:`ScribbleBenchOptions` fields.
    """
    settings = ScribbleBenchOptions(**options)
    if label.ndim != 3:
        raise ValueError(f"expected a (z, y, x) label volume, got shape {label.shape}")
    problem = labelmap_problem(label, set(range(num_classes)))
    if problem:
        raise ValueError(problem)
    scribble = np.full(label.shape, IGNORE, dtype=np.uint8)
    for z in _chosen_slices(label, settings.slice_fraction, rng):
        for class_id in np.unique(label[z]).tolist():
            components, count = ndimage.label(label[z] == class_id, structure=EIGHT_CONNECTED)
            areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
            pick = 1 + int(rng.choice(count, p=areas / areas.sum()))
            scribble[z][_region_strokes(components == pick, rng, settings)] = class_id
    return scribble
