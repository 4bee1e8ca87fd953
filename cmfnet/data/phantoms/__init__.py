"""The synthetic phantoms behind ``cmfnet synth`` (:mod:`cmfnet.data.synth`): stand-ins for the
paper's NPC and WORD data, one case at a time.

The real data (a clinical CT+MR nasopharyngeal carcinoma cohort, the WORD abdominal CT set) are
not redistributable, so the default pipeline runs on phantoms that keep what makes those tasks
what they are:

- ``npc``: paired CT + T2-like MR of the head and neck on one grid, one class (tumour). As in the
  paper's data the modalities are complementary: the tumour enhances 15-30 HU above muscle on
  CT (under 10-20 HU of noise, so that CT alone segments it a little better than MR alone, as in
  the paper's Table IV) and is bright on MR; MR has a multiplicative bias field, stronger
  relative (Rician) noise, blurrier edges and a sub-millimetre registration residual, and other
  bright structures (mucosa, lymph nodes, fat, CSF) that CT anatomy helps to rule out.
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

from dataclasses import dataclass

import numpy as np

from cmfnet.data.phantoms.npc import NPC_DEFAULT_SHAPE, NPC_FOV_MM, NPC_LABELS, npc_case
from cmfnet.data.phantoms.shapes import CaseGenerator, Shape, Spacing
from cmfnet.data.phantoms.word import WORD_DEFAULT_SHAPE, WORD_FOV_MM, WORD_LABELS, word_case
from cmfnet.errors import InputError


@dataclass(frozen=True)
class _Kind:
    code: int  # part of each case's seed, so npc and word cases never share random streams
    channels: tuple[str, ...]
    labels: dict[str, int]
    fov_mm: tuple[float, float, float]
    default_shape: Shape
    generator: CaseGenerator
    description: str
    fixed_split: bool  # one train/val/test split, as the real dataset's (WORD); else k-fold (npc)


KINDS: dict[str, _Kind] = {
    "npc": _Kind(1, ("CT", "MR"), NPC_LABELS, NPC_FOV_MM, NPC_DEFAULT_SHAPE, npc_case,
                 "Synthetic paired CT + T2 MR head-and-neck phantoms with one nasopharyngeal "
                 "tumour (stand-in for the paper's NPC cohort).", fixed_split=False),
    "word": _Kind(2, ("CT",), WORD_LABELS, WORD_FOV_MM, WORD_DEFAULT_SHAPE, word_case,
                  "Synthetic abdominal CT phantoms with the seven WORD organs (stand-in for WORD).",
                  fixed_split=True),
}


def spacing_for(kind: str, shape: Shape) -> Spacing:
    """Voxel spacing (mm, z y x) that fits the kind's fixed field of view into ``shape``."""
    fov = kind_spec(kind).fov_mm
    return tuple(round(f / n, 6) for f, n in zip(fov, shape))  # type: ignore[return-value]


def case_rng(kind: str, seed: int, index: int) -> np.random.Generator:
    """The random stream of one case: depends only on (seed, kind, case index)."""
    return np.random.default_rng([int(seed), kind_spec(kind).code, int(index)])


def kind_spec(kind: str) -> _Kind:
    if kind not in KINDS:
        raise InputError("--kind", f"unknown synthetic dataset '{kind}' (expected one of {sorted(KINDS)})")
    return KINDS[kind]
