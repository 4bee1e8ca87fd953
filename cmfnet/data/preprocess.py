"""Preprocessing applied once, at import, with every step recorded in ``dataset.json``.

Steps, in the order they run on a case:

1. ``align`` (``cmfnet import paired``): optional rigid mutual-information registration of each
   further modality to the first, then resampling onto the first image's grid in physical
   coordinates (linear for images, nearest for labels and scribbles).
2. ``crop_body``: crop every volume of the case to the bounding box of the body, plus a margin.
   The box is computed **from the images only**: DMSPS crops every split to the label's bounding
   box, which leaks the test labels into the input (reference-methods §9).
3. ``resample``: optional resampling to a target spacing.

Intensity normalisation is *not* a step here. Stored images keep their units (CT in HU); the
importers only *declare* each channel's scheme in ``dataset.json["normalization"]``, which
:mod:`cmfnet.data.normalize` applies at load time, so nothing is normalised twice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_otsu

from cmfnet.data.io import IGNORE, Geometry

DEFAULT_CT_WINDOW = (-160.0, 240.0)
DEFAULT_MR_CLIP = (0.5, 99.5)
# Soft tissue is above -500 HU; air, lungs' outside and the table padding are below.
DEFAULT_CT_BODY_HU = -500.0
# A constant value covering at least this share of a volume is a fill (skull-stripped, zero-padded
# or z-scored background), so everything above it is the body.
FILL_FRACTION = 0.01

# How a channel is normalised at load time, which also tells the body mask how to find the body.
CHANNEL_KINDS = ("ct", "mr", "none")


def declare_normalization(channels: list[str], kinds: list[str],
                          ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
                          mr_clip: tuple[float, float] = DEFAULT_MR_CLIP) -> dict[str, dict[str, Any]]:
    """The ``dataset.json["normalization"]`` block for channels of the given kinds.

    ``ct``: clip to the HU window and scale to [0, 1]; ``mr``: clip to percentiles and z-score over
    the non-zero (body) voxels; ``none``: the source is already normalised (e.g. BraTS-2015's
    ``*_subtrMeanDivStd`` files), so it is used as stored.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, kind in zip(channels, kinds, strict=True):
        if kind == "ct":
            out[name] = {"scheme": "ct", "window": [float(ct_window[0]), float(ct_window[1])]}
        elif kind == "mr":
            out[name] = {"scheme": "zscore", "clip_percentiles": [float(mr_clip[0]), float(mr_clip[1])],
                         "mask": "nonzero"}
        elif kind == "none":
            out[name] = {"scheme": "none"}
        else:
            raise ValueError(f"unknown channel kind '{kind}' (expected one of {CHANNEL_KINDS})")
    return out


@dataclass(frozen=True)
class PreprocessConfig:
    """The optional steps and their settings; stored in ``dataset.json`` so later additions match."""

    crop_body: bool = False
    crop_margin_mm: float = 10.0
    ct_body_threshold: float = DEFAULT_CT_BODY_HU
    target_spacing: tuple[float, float, float] | None = None  # (z, y, x) mm

    def to_record(self) -> dict[str, Any]:
        return {"crop_body": self.crop_body, "crop_margin_mm": self.crop_margin_mm,
                "ct_body_threshold": self.ct_body_threshold,
                "target_spacing": list(self.target_spacing) if self.target_spacing else None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PreprocessConfig:
        spacing = record.get("target_spacing")
        return cls(crop_body=bool(record.get("crop_body", False)),
                   crop_margin_mm=float(record.get("crop_margin_mm", 10.0)),
                   ct_body_threshold=float(record.get("ct_body_threshold", DEFAULT_CT_BODY_HU)),
                   target_spacing=tuple(float(s) for s in spacing) if spacing else None)

    def steps(self) -> list[dict[str, Any]]:
        """What ``dataset.json["preprocessing"]["steps"]`` says was done, in order."""
        steps: list[dict[str, Any]] = []
        if self.crop_body:
            steps.append({"step": "crop_body", "computed_from": "images only",
                          "margin_mm": self.crop_margin_mm, "ct_body_threshold_hu": self.ct_body_threshold,
                          "other_channels": f"above a constant fill (>= {FILL_FRACTION:.0%} of voxels) "
                                            "or Otsu's threshold; largest connected component"})
        if self.target_spacing:
            steps.append({"step": "resample", "target_spacing": list(self.target_spacing),
                          "spacing_order": "zyx", "images": "linear", "labels_and_scribbles": "nearest"})
        return steps


@dataclass
class CaseVolumes:
    """One case on its way into a dataset: channel images, dense label and optional scribble."""

    case: str
    images: list[sitk.Image]
    label: sitk.Image | None = None
    scribble: sitk.Image | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def geometry(self) -> Geometry:
        return Geometry.of(self.images[0])


# -- resampling and registration -----------------------------------------------------------------
def resample_onto(image: sitk.Image, reference: sitk.Image, *, labelmap: bool, default: float,
                  transform: sitk.Transform | None = None) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid in physical coordinates.

    Images are interpolated linearly (as float32); label maps by nearest neighbour in their type.
    """
    if transform is None and Geometry.of(image).same_grid(Geometry.of(reference)):
        out = sitk.Image(image)
        out.CopyInformation(reference)
        return out
    interpolator = sitk.sitkNearestNeighbor if labelmap else sitk.sitkLinear
    pixel_type = image.GetPixelID() if labelmap else sitk.sitkFloat32
    return sitk.Resample(image, reference, transform or sitk.Transform(), interpolator, float(default),
                         pixel_type)


def _index_to_physical(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, origin) with physical = matrix @ index + origin, index in SimpleITK order (x, y, z)."""
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    return direction * np.asarray(image.GetSpacing(), float), np.asarray(image.GetOrigin(), float)


def labelled_outside(labelmap: sitk.Image, reference: sitk.Image, unlabelled: int) -> tuple[int, int]:
    """How many of ``labelmap``'s labelled voxels fall outside ``reference``'s field of view, of how
    many: a label drawn on another series can lie (partly) where the first image has no voxel."""
    indices = np.argwhere(sitk.GetArrayViewFromImage(labelmap) != unlabelled)[:, ::-1].astype(float)
    if not len(indices):
        return 0, 0
    matrix, origin = _index_to_physical(labelmap)
    ref_matrix, ref_origin = _index_to_physical(reference)
    points = indices @ matrix.T + origin
    continuous = (points - ref_origin) @ np.linalg.inv(ref_matrix).T
    size = np.asarray(reference.GetSize(), float)
    inside = np.all((continuous >= -0.5) & (continuous <= size - 0.5), axis=1)
    return int(np.count_nonzero(~inside)), len(indices)


def outside_value(image: sitk.Image) -> float:
    """What a resampled image holds outside its source's field of view: the source's minimum
    (air for CT, background for MR), so padding never looks like tissue."""
    return float(sitk.GetArrayViewFromImage(image).min())


MAX_TRANSLATION_MM = 10.0
"""Largest translation (mm) ``--register`` applies without a warning. Series of one session in one
scanner frame are misaligned by patient motion, a few mm; more is more likely a wrong optimum of the
metric than true motion (on a real prostate case the optimizer moved a DWI 12.9 mm and made it worse)."""
MAX_ROTATION_DEG = 5.0
"""Largest rotation (degrees, about any axis) applied without a warning, for the same reason."""
MIN_GAIN = 0.01
"""Relative gain in mutual information a registration must bring to replace the scanner geometry:
smaller gains are within what resampling alone changes."""
PROGRESS_SECONDS = 10.0
"""Seconds between progress lines of a running registration (it takes minutes on real volumes)."""


def _mutual_information(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                        seed: int) -> float | None:
    """Mattes mutual information (higher is better) of ``moving`` under ``transform`` on ``fixed``'s
    grid; the same regular sample points for every transform, so values compare. None: no overlap."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.25, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform)
    try:
        return -float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:  # "too many samples map outside the moving image buffer"
        return None


def _smoothed(image: sitk.Image) -> sitk.Image:
    """Gaussian smoothing by one voxel (per axis), for scoring alignments."""
    return sitk.SmoothingRecursiveGaussian(image, [float(s) for s in image.GetSpacing()])


def _identity_about_centre(image: sitk.Image) -> sitk.Euler3DTransform:
    """The scanner geometry as it is (no motion), rotating about the image's physical centre."""
    transform = sitk.Euler3DTransform()
    centre = [(n - 1) / 2.0 for n in image.GetSize()]
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint(centre))
    return transform


def _better(a: float | None, b: float | None) -> bool:
    """Whether mutual information ``a`` beats ``b`` by at least MIN_GAIN (None: no overlap)."""
    if a is None:
        return False
    return b is None or a > b + MIN_GAIN * abs(b)


def register_rigid(fixed: sitk.Image, moving: sitk.Image, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> tuple[sitk.Euler3DTransform | None, dict[str, Any]]:
    """Rigid alignment of ``moving`` to ``fixed`` by Mattes mutual information, with a sanity check.

    Returns the transform mapping fixed-space points to moving-space points (what
    :func:`resample_onto` takes), or None to keep the physical-space (scanner) geometry, and a
    record of it. Mutual information, because the modalities (CT and MR) have unrelated intensities.

    The metric is reported before (scanner geometry) and after; a transform that does not improve
    it by MIN_GAIN is rejected and the geometry kept; one beyond MAX_TRANSLATION_MM or
    MAX_ROTATION_DEG is applied with a warning in ``record["warnings"]``. The search starts from the
    scanner geometry, or from the image centres aligned when that scores better (series from
    different scanners whose coordinates do not agree). ``log`` gets progress lines every
    PROGRESS_SECONDS and the outcome.
    """
    log = log or (lambda _: None)
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    identity = _identity_about_centre(fixed_f)
    centred = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        fixed_f, moving_f, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY))
    # Scored on lightly smoothed copies: linear interpolation at a sub-voxel offset blurs noise,
    # which alone raises mutual information over the unblurred identity resample.
    fixed_s, moving_s = _smoothed(fixed_f), _smoothed(moving_f)
    before = _mutual_information(fixed_s, moving_s, identity, seed)
    start = centred if _better(_mutual_information(fixed_s, moving_s, centred, seed), before) else identity
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    # Coarse-to-fine, but never shrink a side below 16 voxels.
    shrinks = [s for s in (4, 2) if min(fixed.GetSize()) // s >= 16] + [1]
    method.SetShrinkFactorsPerLevel(shrinks)
    method.SetSmoothingSigmasPerLevel([s / 2 for s in shrinks[:-1]] + [0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(start, inPlace=False)
    last = [time.monotonic()]

    def progress() -> None:
        if time.monotonic() - last[0] >= PROGRESS_SECONDS:
            last[0] = time.monotonic()
            log(f"level {method.GetCurrentLevel() + 1}/{len(shrinks)}, iteration {method.GetOptimizerIteration()}, "
                f"mutual information {-method.GetMetricValue():.4f}")

    method.AddCommand(sitk.sitkIterationEvent, progress)
    log(f"registering ({len(shrinks)} levels, shrink {shrinks}); mutual information with the scanner "
        f"geometry {_format_mi(before)}")
    result = method.Execute(fixed_f, moving_f)
    found = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetNthTransform(0)) \
        if result.GetName() == "CompositeTransform" else sitk.Euler3DTransform(result)
    after = _mutual_information(fixed_s, moving_s, found, seed)
    translation = [float(t) for t in found.GetTranslation()]
    rotation = [math.degrees(a) for a in (found.GetAngleX(), found.GetAngleY(), found.GetAngleZ())]
    record: dict[str, Any] = {
        "method": f"rigid (Euler 3D), Mattes mutual information, multi-resolution {shrinks}",
        "mutual_information_before": before, "mutual_information_after": after,
        "found": {"translation_mm_xyz": translation, "rotation_deg_xyz": rotation},
        "stop": method.GetOptimizerStopConditionDescription(), "warnings": []}
    if not _better(after, before):
        record.update(applied="identity (scanner geometry)", translation_mm_xyz=[0.0] * 3, rotation_deg_xyz=[0.0] * 3)
        record["warnings"].append(
            f"registration did not improve mutual information ({_format_mi(before)} -> {_format_mi(after)}, "
            f"needs +{MIN_GAIN:.0%}): kept the scanner geometry")
        transform = None
    else:
        record.update(applied="registration", translation_mm_xyz=translation, rotation_deg_xyz=rotation)
        shift, turn = float(np.linalg.norm(translation)), max(abs(a) for a in rotation)
        if shift > MAX_TRANSLATION_MM or turn > MAX_ROTATION_DEG:
            record["warnings"].append(
                f"moves by {shift:.1f} mm and rotates by {turn:.1f} deg, beyond {MAX_TRANSLATION_MM:g} mm / "
                f"{MAX_ROTATION_DEG:g} deg for co-acquired series: check the alignment, or import without "
                "--register to trust the scanner geometry")
        transform = found
    log(f"mutual information {_format_mi(before)} -> {_format_mi(after)}; applied: {record['applied']}")
    return transform, record


def _format_mi(value: float | None) -> str:
    return "n/a (no overlap)" if value is None else f"{value:.4f}"


# -- body crop ------------------------------------------------------------------------------------
def _channel_foreground(array: np.ndarray, kind: str, ct_threshold: float) -> np.ndarray:
    if kind == "ct":
        return array > ct_threshold
    lowest = array.min()
    if np.count_nonzero(array == lowest) >= FILL_FRACTION * array.size:
        return array > lowest
    sample = array[::2, ::2, ::2]
    if sample.max() == sample.min():
        return np.zeros(array.shape, bool)
    return array > threshold_otsu(sample)


def body_mask(images: list[np.ndarray], kinds: list[str], ct_threshold: float = DEFAULT_CT_BODY_HU) -> np.ndarray:
    """The body, from the images only: the largest connected component of the union of each
    channel's foreground (CT above ``ct_threshold`` HU; other channels above a constant fill or
    Otsu's threshold)."""
    union = np.zeros(images[0].shape, bool)
    for array, kind in zip(images, kinds, strict=True):
        union |= _channel_foreground(array, kind, ct_threshold)
    components, count = ndimage.label(union)
    if count <= 1:
        return union
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


Box = tuple[tuple[int, ...], tuple[int, ...]]


def bounding_box(mask: np.ndarray, spacing: tuple[float, ...], margin_mm: float) -> Box | None:
    """(start, stop) voxel indices (z, y, x) of ``mask`` grown by ``margin_mm``; None if empty."""
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        margin = math.ceil(margin_mm / spacing[axis])
        start.append(max(0, int(present[0]) - margin))
        stop.append(min(mask.shape[axis], int(present[-1]) + 1 + margin))
    return tuple(start), tuple(stop)


def crop(image: sitk.Image, start: tuple[int, ...], stop: tuple[int, ...]) -> sitk.Image:
    """Crop a (z, y, x) box; the physical position of every kept voxel is unchanged."""
    size = [b - a for a, b in zip(start, stop, strict=True)]
    return sitk.RegionOfInterest(image, size[::-1], list(start)[::-1])


def resample_to_spacing(image: sitk.Image, spacing: tuple[float, ...], *, labelmap: bool, default: float) -> sitk.Image:
    """Resample to ``spacing`` (z, y, x) keeping the origin and the physical extent."""
    new_spacing = tuple(float(s) for s in spacing[::-1])
    size = [max(1, int(round(n * old / new))) for n, old, new in
            zip(image.GetSize(), image.GetSpacing(), new_spacing, strict=True)]
    reference = sitk.Image(size, sitk.sitkUInt8)
    reference.SetSpacing(new_spacing)
    reference.SetOrigin(image.GetOrigin())
    reference.SetDirection(image.GetDirection())
    return resample_onto(image, reference, labelmap=labelmap, default=default)


def _labelled(image: sitk.Image | None, unlabelled: int) -> int:
    if image is None:
        return 0
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(image) != unlabelled))


def preprocess_case(case: CaseVolumes, kinds: list[str], config: PreprocessConfig) -> CaseVolumes:
    """Apply the configured steps to all volumes of a case (already on one grid).

    ``case.record`` gets the source grid, the crop box and how many labelled voxels the crop lost
    (non-zero means a label lies outside the body the images show: worth a look).
    """
    record = case.record
    record["source_shape"] = list(case.geometry().shape)
    record["source_spacing"] = list(case.geometry().spacing)
    if config.crop_body:
        arrays = [sitk.GetArrayViewFromImage(image) for image in case.images]
        mask = body_mask(arrays, kinds, config.ct_body_threshold)
        box = bounding_box(mask, case.geometry().spacing, config.crop_margin_mm)
        if box is None:
            record["crop"] = "skipped: no body found in the images"
        else:
            start, stop = box
            before = (_labelled(case.label, 0), _labelled(case.scribble, IGNORE))
            case.images = [crop(image, start, stop) for image in case.images]
            case.label = crop(case.label, start, stop) if case.label is not None else None
            case.scribble = crop(case.scribble, start, stop) if case.scribble is not None else None
            after = (_labelled(case.label, 0), _labelled(case.scribble, IGNORE))
            record["crop"] = {"start_zyx": list(start), "stop_zyx": list(stop),
                              "label_voxels_lost": before[0] - after[0],
                              "scribble_voxels_lost": before[1] - after[1]}
    if config.target_spacing:
        case.images = [resample_to_spacing(image, config.target_spacing, labelmap=False,
                                           default=outside_value(image)) for image in case.images]
        if case.label is not None:
            case.label = resample_to_spacing(case.label, config.target_spacing, labelmap=True, default=0)
        if case.scribble is not None:
            case.scribble = resample_to_spacing(case.scribble, config.target_spacing, labelmap=True,
                                                default=IGNORE)
    record["shape"] = list(case.geometry().shape)
    record["spacing"] = list(case.geometry().spacing)
    return case
