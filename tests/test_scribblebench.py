"""The ``scribblebench`` variant: per-slice, per-class strokes that stay inside their class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cmfnet.data.io import IGNORE, read_image, read_json
from cmfnet.data.scribblebench import (ScribbleBenchOptions, boundary_stroke, interior_stroke,
                                       simulate_scribblebench)
from cmfnet.data.scribbles import make_scribbles
from test_scribbles import NUM_CLASSES, TINY, _write_dataset, make_label


def _random_label(seed: int, classes: int) -> np.ndarray:
    """Blobs of random classes: smoothed noise, thresholded per class; holes and islands included."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(6, 48, 48)), sigma=(0.5, 3, 3))
    edges = np.quantile(noise, np.linspace(0.4, 1, classes)[:-1])
    return np.digitize(noise, edges).astype(np.uint8)


@pytest.mark.parametrize("seed", range(4))
def test_every_class_on_every_slice_is_scribbled_inside_itself(seed: int) -> None:
    label = _random_label(seed, classes=4)
    scribble = simulate_scribblebench(label, 4, np.random.default_rng(seed))
    assert scribble.dtype == np.uint8 and set(np.unique(scribble).tolist()) <= {0, 1, 2, 3, IGNORE}
    for z in range(label.shape[0]):
        for class_id in np.unique(label[z]).tolist():
            strokes = scribble[z] == class_id
            assert strokes.any(), f"slice {z} class {class_id} has no stroke"
            assert (label[z][strokes] == class_id).all(), f"slice {z} class {class_id} leaves its class"


def test_one_component_per_slice_and_class() -> None:
    """Two equal discs of one class on a slice: exactly one of them is scribbled."""
    label = np.zeros((1, 40, 80), np.uint8)
    yy, xx = np.mgrid[:40, :80]
    label[0][(yy - 20) ** 2 + (xx - 20) ** 2 < 100] = 1
    label[0][(yy - 20) ** 2 + (xx - 60) ** 2 < 100] = 1
    for seed in range(6):
        scribble = simulate_scribblebench(label, 2, np.random.default_rng(seed))[0] == 1
        assert scribble[:, :40].any() != scribble[:, 40:].any()


def test_tiny_objects_keep_a_stroke() -> None:
    label = make_label()
    scribble = simulate_scribblebench(label, NUM_CLASSES, np.random.default_rng(0))
    assert (scribble == TINY).any() and (label[scribble == TINY] == TINY).all()


def test_strokes_are_thick_and_sparse() -> None:
    label = make_label()
    thin = simulate_scribblebench(label, NUM_CLASSES, np.random.default_rng(3), thickness=1)
    thick = simulate_scribblebench(label, NUM_CLASSES, np.random.default_rng(3), thickness=3)
    assert (thick != IGNORE).sum() > 1.5 * (thin != IGNORE).sum()
    assert (thick == IGNORE).mean() > 0.8


def test_interior_stroke_is_connected_and_inside_a_concave_region() -> None:
    region = np.zeros((60, 60), bool)
    region[5:55, 5:15] = region[45:55, 5:55] = True  # an L: straight control polygons would cut the corner
    for seed in range(10):
        stroke = interior_stroke(region, np.random.default_rng(seed))
        assert stroke.any() and not (stroke & ~region).any()
        assert ndimage.label(stroke, structure=np.ones((3, 3)))[1] <= 2


def test_boundary_stroke_follows_the_eroded_contour() -> None:
    """On a disc of radius 20 eroded by 3, the piece lies on the circle of radius ~17, 7-15 % long."""
    yy, xx = np.mgrid[:64, :64]
    distance = np.hypot(yy - 32, xx - 32)
    region = distance < 20
    for seed in range(5):
        stroke = boundary_stroke(region, np.random.default_rng(seed), radius=3, length_share=(0.07, 0.15))
        assert stroke is not None
        assert np.abs(distance[stroke] - 17).max() < 1.6
        circumference = 2 * np.pi * 17
        assert 0.05 * circumference <= stroke.sum() <= 0.2 * circumference
    assert boundary_stroke(distance < 2, np.random.default_rng(0), radius=3, length_share=(0.07, 0.15)) is None


def test_slice_fraction_scribbles_that_share_of_slices() -> None:
    label = np.zeros((20, 32, 32), np.uint8)
    label[:10, 10:20, 10:20] = 1  # slices 0-9 hold foreground, 10-19 only background
    scribble = simulate_scribblebench(label, 2, np.random.default_rng(0), slice_fraction=0.5)
    scribbled = (scribble != IGNORE).any(axis=(1, 2))
    assert scribbled[:10].sum() == 5 and scribbled[10:].sum() == 5


def test_deterministic_per_generator_state() -> None:
    label = make_label()
    first = simulate_scribblebench(label, NUM_CLASSES, np.random.default_rng(7))
    np.testing.assert_array_equal(first, simulate_scribblebench(label, NUM_CLASSES, np.random.default_rng(7)))
    assert not np.array_equal(first, simulate_scribblebench(label, NUM_CLASSES, np.random.default_rng(8)))


@pytest.mark.parametrize("options, message", [
    ({"thickness": 2}, "odd"), ({"control_points": 2}, "control_points"),
    ({"erosion_extra": (3, 1)}, "erosion_extra"), ({"boundary_length": (0.2, 0.1)}, "boundary_length"),
    ({"slice_fraction": 0}, "slice_fraction"),
])
def test_options_are_validated(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScribbleBenchOptions(**options)


def test_out_of_range_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the declared classes"):
        simulate_scribblebench(make_label(), 2, np.random.default_rng(0))


def test_make_scribbles_writes_the_variant_and_its_options(tmp_path: Path) -> None:
    dataset = _write_dataset(tmp_path / "ds")
    report = make_scribbles(dataset, "scribblebench", seed=1)
    folder = dataset / "scribblesTr" / "scribblebench"
    saved = read_json(folder / "coverage.json")
    assert saved["variant"] == "scribblebench" and saved["options"]["thickness"] == 3
    for case in report["cases"]:
        scribble, _ = read_image(folder / f"{case}.nii.gz")
        label, _ = read_image(dataset / "labelsTr" / f"{case}.nii.gz")
        assert ((scribble == IGNORE) | (scribble == label)).all()


def test_any_card_trains_on_the_scribblebench_variant() -> None:
    """The scribble-protocol rows: pCE on each variant, scribblebench included."""
    from cmfnet.training.cards import load_card
    path = Path(__file__).parents[1] / "methods" / "scribble_protocols.yaml"
    variants = {v: load_card(path, variant=v).scribble_variant for v in ("sim", "autobg", "scribblebench")}
    assert variants == {"sim": "sim", "autobg": "autobg", "scribblebench": "scribblebench"}
