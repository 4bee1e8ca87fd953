"""NPC: paired CT + T2-like MR of the nasopharynx, one class (tumour)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmfnet.data.phantoms.shapes import (Canvas, Grid, Shape, Spacing, blob_level, constant_table, ct_image,
                                           largest_component, shift_in_plane, sigma_vox, single_threaded_blas,
                                           smooth_field, value_table)


NPC_LABELS = {"background": 0, "tumour": 1}
NPC_FOV_MM = (96.0, 162.56, 162.56)  # default shape (32, 128, 128) at (3.0, 1.27, 1.27) mm
NPC_DEFAULT_SHAPE: Shape = (32, 128, 128)
# tissue codes of the head-and-neck phantom
NPC_TISSUES = 9
(H_AIR, H_FAT, H_MUSCLE, H_MUCOSA, H_NODE, H_BONE, H_MARROW, H_CSF, H_TUMOUR) = range(NPC_TISSUES)
NPC_MIN_TUMOUR_VOXELS = 10
# Protocol 7: the smallest of the ranges 3-12, 10-20, 15-30 and 25-45 HU at which FullySup on CT
# alone segments the tumour at least as well as on MR alone, as in the paper's Table IV (CT 74.4 %
# against MR 70.9 %); at 3-12 HU, CT alone reached 28 % against MR's 69 % (docs/protocol.md).
CT_TUMOUR_ABOVE_MUSCLE_HU = (15.0, 30.0)


@single_threaded_blas
def npc_case(rng: np.random.Generator, shape: Shape, spacing: Spacing) -> dict[str, np.ndarray]:
    """One head-and-neck case: {"CT": HU int16, "MR": T2-like int16, "label": uint8}."""
    grid = Grid(shape, spacing)
    canvas = Canvas(grid.shape)
    z, y, x = grid.coords()

    # head outline: an egg narrowing towards the face, irregular, slightly tapered in z
    scale = rng.uniform(0.92, 1.04)
    semi_y, semi_x = 80.0 * scale, 68.0 * scale * rng.uniform(0.95, 1.05)
    centre_y = rng.uniform(0.0, 8.0)
    rel_y = (y - centre_y) / semi_y
    half_width = semi_x * (1 - 0.22 * np.clip(-rel_y, 0, 1) ** 2) * (1 + 0.04 * z / 48.0)
    radius = np.sqrt(rel_y ** 2 + (x / half_width) ** 2)
    radius = radius - 0.03 * smooth_field(rng, grid.shape, grid.spacing, 40.0)
    body_level = (radius - 1.0) * semi_x
    body = body_level < 0
    canvas.paint(body, H_MUSCLE)
    canvas.paint(body & (body_level > -rng.uniform(4.0, 9.0)), H_FAT)  # subcutaneous fat

    # parapharyngeal fat spaces, lateral to the nasopharynx
    for side in (-1, 1):
        fat = blob_level(grid, rng, (12 + rng.uniform(-4, 4), centre_y - 2 + rng.uniform(-3, 3),
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
        node = blob_level(grid, rng, centre, (r * 1.3, r, r * rng.uniform(0.8, 1.2)), roughness=0.1)
        canvas.paint((node < 0) & body, H_NODE)

    # bone: vertebra/clivus with its arch around the spinal canal, jaw arch, pterygoid plates
    vertebra_y = centre_y + 30 + rng.uniform(-3, 3)
    vertebra = blob_level(grid, rng, (0.0, vertebra_y, rng.uniform(-2, 2)),
                           (300.0, rng.uniform(11, 14), rng.uniform(15, 18)), roughness=0.05)
    canal_y = vertebra_y + 22
    canal = blob_level(grid, rng, (0.0, canal_y, 0.0), (300.0, 7.0, 8.0))
    arch = (canal >= 0) & (canal < 4.5)
    jaw_y = centre_y - 22 + rng.uniform(-3, 3)
    jaw_radius = np.sqrt(((y - jaw_y) / 48.0) ** 2 + (x / 45.0) ** 2) * np.ones_like(z)
    jaw = (jaw_radius > 1 - 5.0 / 45.0) & (jaw_radius < 1) & (y < centre_y + 5)
    bone = (vertebra < 0) | arch | jaw
    for side in (-1, 1):
        plate = blob_level(grid, rng, (15.0, centre_y - 12, side * rng.uniform(22, 26)),
                            (18.0, 8.0, 3.0), roughness=0.1)
        bone |= plate < 0
    canvas.paint(bone & body, H_BONE)
    canvas.paint((vertebra < -3.0) & body, H_MARROW)  # cancellous core inside the cortex
    canvas.paint((canal < 0) & body, H_CSF)

    # air: nasopharynx, oropharynx below, nasal cavities in front; mucosa lines them
    nasopharynx = (18.0, centre_y - 8 + rng.uniform(-3, 3), rng.uniform(-2, 2))
    np_radii = (22.0, 9.0 * rng.uniform(0.8, 1.2), 14.0 * rng.uniform(0.8, 1.2))
    airway = blob_level(grid, rng, nasopharynx, np_radii, roughness=0.15, corr_mm=15.0)
    airway = np.minimum(airway, blob_level(grid, rng, (-22.0, centre_y - 4, 0.0),
                                            (28.0, 7.0 * rng.uniform(0.8, 1.2), 10.0),
                                            roughness=0.15, corr_mm=15.0))
    for side in (-1, 1):
        airway = np.minimum(airway, blob_level(grid, rng, (22.0, centre_y - 36, side * 7.0),
                                                (16.0, 24.0, 4.5), roughness=0.15, corr_mm=15.0))
    inside = body & (body_level < -8.0)
    mucosa = inside & (airway >= 0) & (airway < rng.uniform(2.0, 3.5)) & canvas.is_any(
        H_MUSCLE, H_FAT, H_NODE)
    canvas.paint(mucosa, H_MUCOSA)
    canvas.paint(inside & (airway < 0), H_AIR)

    _paint_npc_tumour(rng, grid, canvas, body, nasopharynx, np_radii)

    ct_mean = value_table(rng, {H_AIR: (-1000, -1000), H_FAT: (-110, -80), H_MUSCLE: (40, 60),
                           H_BONE: (700, 1000), H_MARROW: (250, 400), H_CSF: (5, 15)},
                     NPC_TISSUES)
    muscle = ct_mean[H_MUSCLE]
    ct_mean[H_MUCOSA] = muscle + rng.uniform(5, 15)   # enhancing mucosa
    ct_mean[H_NODE] = muscle + rng.uniform(0, 10)
    ct_mean[H_TUMOUR] = muscle + rng.uniform(*CT_TUMOUR_ABOVE_MUSCLE_HU)
    # one tissue heterogeneity seen by both modalities, as the same anatomy would be
    texture_field = smooth_field(rng, grid.shape, grid.spacing, 12.0)
    ct_texture = constant_table({H_FAT: 4, H_MUSCLE: 4, H_MUCOSA: 4, H_NODE: 4, H_BONE: 60, H_MARROW: 30,
                             H_CSF: 2, H_TUMOUR: 4}, NPC_TISSUES)
    ct = ct_image(rng, grid, canvas.tissue, ct_mean, ct_texture, texture_field, rng.uniform(10, 20))

    # T2: muscle 1; fat, CSF, mucosa, nodes and tumour bright; bone and air dark
    mr_mean = value_table(rng, {H_AIR: (0, 0), H_FAT: (2.1, 2.6), H_MUSCLE: (0.9, 1.1),
                           H_MUCOSA: (1.6, 2.0), H_NODE: (1.5, 1.9), H_BONE: (0.1, 0.25),
                           H_MARROW: (1.1, 1.5), H_CSF: (2.8, 3.3), H_TUMOUR: (1.6, 2.0)},
                     NPC_TISSUES)
    mr_texture = constant_table({H_FAT: 0.08, H_MUSCLE: 0.05, H_MUCOSA: 0.08, H_NODE: 0.06, H_BONE: 0.03,
                             H_MARROW: 0.08, H_CSF: 0.05, H_TUMOUR: 0.08}, NPC_TISSUES)
    mr = _mr_image(rng, grid, canvas.tissue, mr_mean, mr_texture, texture_field)
    return {"CT": ct, "MR": mr, "label": canvas.label}


def _paint_npc_tumour(rng: np.random.Generator, grid: Grid, canvas: Canvas, body: np.ndarray,
                      nasopharynx: tuple[float, float, float],
                      np_radii: tuple[float, float, float]) -> None:
    """An irregular tumour arising from the posterior/lateral nasopharyngeal wall.

    Sizes are log-uniform in equivalent radius, 12-30 mm (~7-113 ml, the range of primary NPC
    tumour volumes from T1 to T4), so small tumours stay common; smaller ones span too few voxels at
    the default grid for any method to score on them, which made fold means noise. The tumour fills the lumen where it bulges into it and spares bone and the spinal canal.
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
    radius_eq = float(np.exp(rng.uniform(np.log(12.0), np.log(30.0))))
    for _ in range(8):
        aspect = np.exp(rng.normal(0.0, 0.2, 3))
        radii = tuple(radius_eq * aspect / np.prod(aspect) ** (1 / 3))
        centre = seed_point.copy()
        centre[1:] += outward * 0.35 * min(radii[1], radii[2])
        level = blob_level(grid, rng, tuple(centre), radii, roughness=0.3,
                            angle_deg=rng.uniform(0, 180), corr_mm=max(radius_eq, 6.0))
        tumour = largest_component((level < 0) & ~spared)
        if tumour.sum() >= NPC_MIN_TUMOUR_VOXELS:
            break
        radius_eq *= 1.3  # too small to be seen on this grid: grow it
    canvas.paint(tumour, H_TUMOUR, label=1)


def _mr_image(rng: np.random.Generator, grid: Grid, tissue: np.ndarray, mean: np.ndarray,
              texture: np.ndarray, texture_field: np.ndarray) -> np.ndarray:
    """T2-like MR resampled onto the CT grid: registration residual, blur, bias field, Rician noise."""
    mr = mean[tissue] + texture[tissue] * texture_field
    shift_mm = rng.uniform(-1.0, 1.0, 2)
    mr = shift_in_plane(mr, (shift_mm[0] / grid.spacing[1], shift_mm[1] / grid.spacing[2]))
    mr = ndimage.gaussian_filter(mr, sigma_vox((1.5, 1.1, 1.1), grid.spacing))
    # over the body the field spans 1.34x max/min in the median case (1.12-1.76x), between
    # BrainWeb's 20 % and 40 % non-uniformity levels (about 1.22x and 1.5x). 0.12-0.25 (protocol
    # <= 4) spanned 1.68x (1.22-2.72x) and lit muscle up to the tumour's level (docs/protocol.md)
    bias = np.exp(rng.uniform(0.07, 0.14) * smooth_field(rng, grid.shape, grid.spacing, 120.0))
    scale = rng.uniform(250, 400)
    signal = mr * bias * np.float32(scale)
    noise_sd = np.float32(rng.uniform(0.05, 0.09) * scale)
    real = signal + noise_sd * rng.standard_normal(grid.shape, dtype=np.float32)
    imaginary = noise_sd * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.clip(np.rint(np.hypot(real, imaginary)), 0, 32767).astype(np.int16)
