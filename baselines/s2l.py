"""S2L, Scribble2Label (Lee & Jeong, MICCAI 2020): pseudo-labels from a per-voxel EMA of predictions.

Every ``period`` iterations the whole training set is re-predicted through
``TrainingContext.predict`` (eval mode, no grad: WSL4MIS updates in train mode with
batch 1, which overwrites BatchNorm statistics and keeps dropout on) and each voxel keeps
w <- a p + (1 - a) w, starting from 0. After ``warmup`` iterations an unscribbled voxel whose
averaged probability for some class exceeds ``threshold`` is a pseudo-label of that class.

Memory: the maps are float16 on a grid ``ema_stride`` times coarser per axis (average pooling), so
they take 2 K / prod(stride) bytes per voxel, K/4 bytes with the default stride 2 (a
512x512x200 CT with 8 classes: 105 MB instead of 1.7 GB in float32 at full resolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.regularizers import check_schedule, schedule_iterations
from cmfnet.errors import InputError
from cmfnet.data.io import IGNORE
from cmfnet.training.losses import partial_ce
from cmfnet.data.io import counted
from cmfnet.training.cards import Card
from cmfnet.training.contract import Batch, Method, StepInfo, TrainingContext



def downsample(probs: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Average (K, z, y, x) maps over stride-sized blocks; the last, partial blocks average what they hold."""
    if all(s == 1 for s in stride):
        return probs
    return F.avg_pool3d(probs[None], kernel_size=tuple(stride), stride=tuple(stride), ceil_mode=True)[0]


def grid_shape(shape: Sequence[int], stride: Sequence[int]) -> tuple[int, int, int]:
    return tuple(-(-n // s) for n, s in zip(shape, stride))  # type: ignore[return-value]


def crop_grid(grid: torch.Tensor, box: Sequence[slice], shape: Sequence[int],
              stride: Sequence[int]) -> torch.Tensor:
    """The full-resolution (K, pz, py, px) patch ``box`` of a coarse map (nearest-neighbour lookup)."""
    index = [torch.as_tensor(np.arange(*sl.indices(n)) // s) for sl, n, s in zip(box, shape, stride)]
    return grid[:, index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]]


def pseudo_labels_from_average(average: torch.Tensor, scribble: torch.Tensor, threshold: float) -> torch.Tensor:
    """Class of each unscribbled voxel whose averaged probability exceeds ``threshold``, else 255.

    Scribbled voxels stay 255 here: they are already supervised by pCE and must not be overwritten.
    """
    confidence, label = average.max(dim=0)
    keep = (confidence > threshold) & (scribble == IGNORE)
    return torch.where(keep, label, torch.full_like(label, IGNORE))


class Scribble2Label(Method):
    """L = pCE + pseudo_weight * CE(pseudo-labels), pseudo-labels only after the warm-up."""

    name = "s2l"
    defaults: dict[str, Any] = {
        "alpha": 0.2,          # EMA rate (official code and WSL4MIS)
        "threshold": 0.8,      # tau (official code and WSL4MIS, per class)
        "pseudo_weight": 0.5,  # official code and WSL4MIS
        "warmup": 0.1,         # WSL4MIS: 6000 of 60000 iterations
        "period": 0.05,        # one whole-set update per 5% of training (see docs/baselines.md)
        "ema_stride": 2,       # int or [z, y, x]: coarser grid of the float16 EMA maps
    }
    param_types = {"ema_stride": int | list[int]}

    def __init__(self, card: Card) -> None:
        super().__init__(card)
        for key in ("warmup", "period"):
            check_schedule(card, key, self.params[key])
        stride = self.params["ema_stride"]
        stride = [stride] * 3 if isinstance(stride, int) else list(stride)
        if len(stride) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in stride):
            raise InputError(card.path, f"params.ema_stride must be a positive int or 3 of them, got {stride!r}")
        if not 0 < self.params["alpha"] <= 1:
            raise InputError(card.path, "params.alpha must be in (0, 1]")
        self.stride: tuple[int, int, int] = tuple(stride)  # type: ignore[assignment]
        self.maps: dict[str, torch.Tensor] = {}     # case -> (K, *grid) float16
        self.shapes: dict[str, list[int]] = {}      # case -> full-resolution (z, y, x)
        self.updates = 0

    # -- state ---------------------------------------------------------------------------------
    def setup(self, context: TrainingContext) -> None:
        for case in context.cases:
            shape = list(context.image(case).shape[1:])
            if case in self.maps and self.shapes.get(case) == shape:
                continue  # restored by a resume
            self.shapes[case] = shape
            self.maps[case] = torch.zeros((context.num_classes, *grid_shape(shape, self.stride)),
                                          dtype=torch.float16)
        size = sum(m.numel() * m.element_size() for m in self.maps.values())
        context.log(f"S2L: float16 EMA maps on a /{'x'.join(map(str, self.stride))} grid, "
                    f"{size / 2**20:.1f} MiB for {counted(len(self.maps), 'volume')}")

    def state_dict(self) -> dict[str, Any]:
        return {"maps": dict(self.maps), "shapes": {c: list(s) for c, s in self.shapes.items()},
                "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.maps = {c: m.to(torch.float16) for c, m in state.get("maps", {}).items()}
        self.shapes = {c: list(s) for c, s in state.get("shapes", {}).items()}
        self.updates = int(state.get("updates", 0))

    # -- EMA update ----------------------------------------------------------------------------
    def after_step(self, context: TrainingContext, iteration: int) -> None:
        period = max(1, schedule_iterations(self.params["period"], context.max_iterations))
        if (iteration + 1) % period == 0:
            self.update_averages(context)

    def update_averages(self, context: TrainingContext) -> None:
        """w <- a p + (1 - a) w for every training volume, p from the eval-mode sliding window."""
        alpha = float(self.params["alpha"])
        for case in context.cases:
            probs = context.predict(case)
            current = self.maps[case].float()
            current.mul_(1.0 - alpha).add_(downsample(probs.float(), self.stride), alpha=alpha)
            self.maps[case] = current.to(torch.float16)
        self.updates += 1

    # -- loss ----------------------------------------------------------------------------------
    def pseudo_labels(self, batch: Batch) -> torch.Tensor:
        """(B, z, y, x) pseudo-labels of the batch's patches, cropped from the EMA maps with ``boxes``."""
        labels = []
        for i, (case, box) in enumerate(zip(batch.case_ids, batch.boxes)):
            if case not in self.maps:
                raise RuntimeError(f"S2L has no EMA map for case '{case}' (setup() was not called?)")
            average = crop_grid(self.maps[case], box, self.shapes[case], self.stride).float()
            labels.append(pseudo_labels_from_average(average, batch.target[i].cpu(), self.params["threshold"]))
        return torch.stack(labels).to(batch.target.device)

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits(model, batch.image)
        pce = partial_ce(logits, batch.target)
        if step.iteration < schedule_iterations(self.params["warmup"], step.max_iterations):
            return pce, {"pce": float(pce.detach()), "pseudo": 0.0, "pseudo_fraction": 0.0}
        pseudo = self.pseudo_labels(batch)
        pseudo_ce = partial_ce(logits, pseudo)
        total = pce + self.params["pseudo_weight"] * pseudo_ce
        return total, {"pce": float(pce.detach()), "pseudo": float(pseudo_ce.detach()),
                       "pseudo_fraction": float((pseudo != IGNORE).float().mean())}
