"""WORD: single-channel abdominal CT, seven organs."""

from __future__ import annotations

import numpy as np

from cmfnet.data.phantoms.shapes import (Canvas, Grid, Shape, Spacing, blob_level, ct_image, single_threaded_blas,
                                           smooth_field, value_table)


WORD_LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4,
               "stomach": 5, "gallbladder": 6, "pancreas": 7}
WORD_FOV_MM = (200.0, 384.0, 384.0)  # default shape (40, 128, 128) at (5.0, 3.0, 3.0) mm
WORD_DEFAULT_SHAPE: Shape = (40, 128, 128)
# tissue codes of the abdominal phantom
WORD_TISSUES = 18
(A_AIR, A_FAT, A_MUSCLE, A_BOWEL, A_GAS, A_BONE, A_CORTICAL, A_CSF, A_AORTA, A_IVC, A_LIVER,
 A_SPLEEN, A_CORTEX, A_MEDULLA, A_STOMACH_WALL, A_STOMACH_FLUID, A_GALLBLADDER,
 A_PANCREAS) = range(WORD_TISSUES)


@single_threaded_blas
def word_case(rng: np.random.Generator, shape: Shape, spacing: Spacing) -> dict[str, np.ndarray]:
    """One abdominal CT case: {"CT": HU int16, "label": uint8} with the seven WORD organs."""
    grid = Grid(shape, spacing)
    canvas = Canvas(grid.shape)
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
    body_level = (radius - 1.0) / gradient + 4.0 * smooth_field(rng, grid.shape, grid.spacing, 60.0)
    subcutaneous = rng.uniform(10.0, 35.0) * np.where(y > 0, 0.5, 1.0)  # thinner at the back
    body = body_level < 0
    cavity = body_level < -(subcutaneous + 10.0)
    canvas.paint(body, A_FAT)
    canvas.paint(body & ~cavity & (body_level < -subcutaneous), A_MUSCLE)
    mesentery = smooth_field(rng, grid.shape, grid.spacing, 25.0)
    fat_threshold = np.where(y > 20, -0.8, 0.3)  # retroperitoneum is mostly fat
    canvas.paint(cavity & (mesentery <= fat_threshold), A_BOWEL)
    # tissue heterogeneity; its rare peaks also place gas bubbles in the bowel
    texture_field = smooth_field(rng, grid.shape, grid.spacing, 12.0)
    canvas.paint(cavity & (mesentery <= fat_threshold) & (texture_field > 2.2), A_GAS)

    organs = [
        # liver: right lobe plus the left lobe across the midline, under the diaphragm
        (A_LIVER, 1, np.minimum(
            blob_level(grid, rng, jitter(35, -15, -70), sized(62, 80, 68), 0.08, corr_mm=60),
            blob_level(grid, rng, jitter(50, -45, 15), sized(35, 30, 45), 0.08, corr_mm=40))),
        # spleen: left, posterior, high; long axis along the ribs
        (A_SPLEEN, 2, blob_level(grid, rng, jitter(40, 45, 100), sized(45, 45, 22), 0.1,
                                  angle_deg=rng.uniform(30, 50))),
        # stomach: left upper quadrant, anterior
        (A_STOMACH_WALL, 5, blob_level(grid, rng, jitter(45, -30, 55), sized(48, 35, 45), 0.15,
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
        level = blob_level(grid, rng, jitter(z_centre, 55, side * 68, spread=6.0),
                            sized(55, 24, 28), 0.05, angle_deg=side * rng.uniform(15, 30))
        kidney = (level < 0) & cavity
        canvas.paint(kidney, A_CORTEX, label)
        canvas.paint(kidney & (level < -6.0), A_MEDULLA, label)

    # pancreas: head right of the midline by the duodenum, body draped over the spine, tail
    # towards the splenic hilum behind the stomach; thicker at the head, lobulated
    canvas.paint(_pancreas(grid, rng, s) & cavity, A_PANCREAS, 7)
    # gallbladder: under the liver's inferior surface, anterior
    gallbladder = blob_level(grid, rng, jitter(-5, -45, -50, spread=5.0), sized(30, 16, 14), 0.08,
                              angle_deg=rng.uniform(-30, 30))
    canvas.paint((gallbladder < 0) & cavity, A_GALLBLADDER, 6)

    # retroperitoneal structures override organs they touch: vessels, spine, psoas, back muscles
    canvas.paint(body & (blob_level(grid, rng, (0, 22 * s, 12 * s), (400, 11, 11)) < 0), A_AORTA)
    canvas.paint(body & (blob_level(grid, rng, (0, 18 * s, -22 * s), (400, 10, 13)) < 0), A_IVC)
    psoas_radius = 8.0 + 8.0 * np.clip(-z / 100.0, 0, 1)  # psoas grows caudally
    for side in (-1, 1):
        psoas = ((y - 45 * s) / (psoas_radius + 2)) ** 2 + ((x - side * 35 * s) / psoas_radius) ** 2 < 1
        back = blob_level(grid, rng, (0, 80 * s, side * 38 * s), (400, 18 * s, 28 * s), 0.05) < 0
        canvas.paint(body & (psoas | back), A_MUSCLE)
    vertebra = blob_level(grid, rng, (0, 50 * s, 0), (400, 16, 21), 0.03)
    canal = blob_level(grid, rng, (0, 78 * s, 0), (400, 8, 9))
    canvas.paint(body & (vertebra < 0), A_CORTICAL)
    canvas.paint(body & (vertebra < -3.0), A_BONE)
    canvas.paint(body & (canal >= 0) & (canal < 5.0), A_CORTICAL)
    canvas.paint(body & (canal < 0), A_CSF)
    # lower ribs: sloping bands in the lateral and posterior wall, upper part of the field of view
    rib_band = body & (body_level < -subcutaneous + 2.0) & (body_level > -subcutaneous - 8.0)
    rib_phase = np.sin(2 * np.pi * (z + 0.25 * y) / 24.0 + rng.uniform(0, 2 * np.pi))
    canvas.paint(rib_band & (rib_phase > 0.55) & (z > -40) & (y > -50 * s), A_CORTICAL)

    hu = value_table(rng, {
        A_AIR: (-1000, -1000), A_FAT: (-110, -90), A_MUSCLE: (45, 55), A_BOWEL: (25, 40),
        A_GAS: (-950, -850), A_BONE: (200, 350), A_CORTICAL: (600, 900), A_CSF: (5, 15),
        A_AORTA: (150, 200), A_IVC: (110, 140), A_LIVER: (55, 65), A_SPLEEN: (45, 52),
        A_CORTEX: (140, 170), A_MEDULLA: (90, 120), A_STOMACH_WALL: (35, 45),
        A_STOMACH_FLUID: (5, 20), A_GALLBLADDER: (0, 18), A_PANCREAS: (40, 50)}, WORD_TISSUES)
    texture = np.full(WORD_TISSUES, 3.0, np.float32)  # HU of low-frequency heterogeneity
    texture[[A_AIR, A_GAS]] = 0.0
    texture[[A_BONE, A_CORTICAL]] = 40.0
    texture[A_LIVER] = 5.0
    ct = ct_image(rng, grid, canvas.tissue, hu, texture, texture_field, rng.uniform(10, 20))
    return {"CT": ct, "label": canvas.label}


def _pancreas(grid: Grid, rng: np.random.Generator, s: float) -> np.ndarray:
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
        mask[box] = radius - 0.12 * smooth_field(rng, radius.shape, grid.spacing, 15.0) < 1
    return mask
