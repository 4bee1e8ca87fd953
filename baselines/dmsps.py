"""DMSPS (Han et al., MedIA 2024): dynamically mixed soft pseudo-labels, then a second stage on
uncertainty-filtered pseudo-labels, as one training run.

Stage 1: a shared V-Net encoder with a main and an auxiliary decoder (the auxiliary one sees the
encoder features through Dropout3d), L = 0.5 (pCE1 + pCE2) + w * 0.5 (CE(p1, q) + CE(p2, q)) with
q = a p1 + (1 - a) p2 detached and a ~ U(0, 1) once per step.
Stage 2 (after ``stage1_fraction`` of training): every training volume is predicted with the mean
of both decoders' softmax; voxels with normalised entropy below ``uncertainty_threshold`` keep the
prediction, each foreground class keeps its largest connected component, the scribbles are put
back on top, and these labels replace each case's training target (``TrainingContext.replace_target``); training continues from the
stage-1 weights with the same loss. Choices against the reference are in docs/baselines.md.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from baselines.regularizers import entropy_of_probabilities, soft_cross_entropy
from cmfnet.data.io import IGNORE, counted
from cmfnet.errors import InputError
from cmfnet.training.cards import Card
from cmfnet.training.contract import Batch, Method, StepInfo, TrainingContext
from cmfnet.training.losses import partial_ce


UNCERTAIN_LABELS = ("background", "ignore")


def mixed_soft_label(p1: torch.Tensor, p2: torch.Tensor, alpha: float) -> torch.Tensor:
    """q = a p1 + (1 - a) p2, detached: a target, never a path for gradients."""
    return (alpha * p1 + (1.0 - alpha) * p2).detach()


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (empty stays empty)."""
    components, count = ndimage.label(mask)
    if count == 0:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def stage2_labels(probs: torch.Tensor, scribble: np.ndarray, threshold: float,
                  uncertain_label: str = "background") -> np.ndarray:
    """Pseudo-labels (uint8, z, y, x) from the mean softmax (K, z, y, x) of the two decoders.

    Voxels with normalised entropy below ``threshold`` keep their argmax; for each foreground
    class only its largest component is kept. Everything else is background 0 (``"background"``,
    the official WORD-3D scripts) or ignored 255 (``"ignore"``, PyMIC's expanded seeds, where
    confident background stays 0). Scribbled voxels always keep their scribble.
    """
    num_classes = probs.shape[0]
    confident = (entropy_of_probabilities(probs, dim=0) / math.log(num_classes) < threshold).numpy()
    prediction = probs.argmax(dim=0).numpy()
    fill = 0 if uncertain_label == "background" else IGNORE
    labels = np.full(prediction.shape, fill, dtype=np.uint8)
    if uncertain_label == "ignore":
        labels[confident & (prediction == 0)] = 0
    for cls in range(1, num_classes):
        labels[largest_component(confident & (prediction == cls))] = cls
    scribbled = scribble != IGNORE
    labels[scribbled] = scribble[scribbled]
    return labels


def _pack(labels: np.ndarray) -> dict[str, Any]:
    """Label maps compress ~100x; a plain uint8 tensor keeps the checkpoint loadable with weights_only."""
    data = zlib.compress(np.ascontiguousarray(labels, dtype=np.uint8).tobytes(), 1)
    return {"shape": list(labels.shape), "data": torch.frombuffer(bytearray(data), dtype=torch.uint8)}


def _unpack(packed: dict[str, Any]) -> np.ndarray:
    raw = zlib.decompress(packed["data"].numpy().tobytes())
    return np.frombuffer(raw, dtype=np.uint8).reshape(packed["shape"]).copy()


class DynamicallyMixedSoftPseudoLabels(Method):
    """Both DMSPS stages; ``logits()`` is the main decoder (what the reference evaluates)."""

    name = "dmsps"
    defaults: dict[str, Any] = {
        "pseudo_weight": 8.0,           # DMSPS WORD-3D and ACDC
        "double_softmax": True,         # CE on probabilities, as the reference (see docs)
        "stage1_fraction": 0.5,         # share of max_iterations spent in stage 1
        "uncertainty_threshold": 0.3,   # WORD (trainReT03); ACDC uses 0.1
        "uncertain_label": "background",  # official WORD-3D scripts; "ignore" = PyMIC
        "reset_optimizer": True,        # the reference's stage 2 is a fresh run from stage-1 weights
        "stage2_lr": None,              # None: the preset's learning rate
    }
    param_types = {"stage2_lr": float | None}

    def __init__(self, card: Card) -> None:
        super().__init__(card)
        if card.network.get("arch") != "vnet_dual_decoder":
            raise InputError(card.path, "DMSPS trains two decoders on one encoder: network.arch must be "
                                        "'vnet_dual_decoder'")
        if self.params["uncertain_label"] not in UNCERTAIN_LABELS:
            raise InputError(card.path, f"params.uncertain_label must be one of {UNCERTAIN_LABELS}")
        fraction = self.params["stage1_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise InputError(card.path, "params.stage1_fraction must be a number in [0, 1]")
        if self.params["stage2_lr"] is not None and self.params["stage2_lr"] <= 0:
            raise InputError(card.path, f"params.stage2_lr={self.params['stage2_lr']!r}: must be > 0 or null")
        self.stage = 1
        self.labels: dict[str, np.ndarray] = {}
        self._decoder_mean = False

    # -- prediction ----------------------------------------------------------------------------
    def logits(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Main decoder; while stage-2 labels are made, log of the two decoders' mean softmax
        (so that the engine's softmax of it is exactly that mean)."""
        if not self._decoder_mean:
            return model(image)
        main, aux = model.both(image)
        return torch.log(0.5 * (torch.softmax(main, dim=1) + torch.softmax(aux, dim=1)))

    # -- loss ----------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        main, aux = model.both(batch.image)
        pce = 0.5 * (partial_ce(main, batch.target) + partial_ce(aux, batch.target))
        p_main, p_aux = torch.softmax(main, dim=1), torch.softmax(aux, dim=1)
        alpha = float(torch.rand(()))
        mixed = mixed_soft_label(p_main, p_aux, alpha)
        # The reference feeds probabilities to a CE that applies softmax again; its weight 8 is
        # tuned for that flattened term, so it is kept by default.
        scores = (p_main, p_aux) if self.params["double_softmax"] else (main, aux)
        mix = 0.5 * (soft_cross_entropy(scores[0], mixed) + soft_cross_entropy(scores[1], mixed))
        total = pce + self.params["pseudo_weight"] * mix
        return total, {"pce": float(pce.detach()), "mixed_ce": float(mix.detach()), "alpha": alpha,
                       "stage": float(self.stage)}

    # -- stage 2 -------------------------------------------------------------------------------
    def after_step(self, context: TrainingContext, iteration: int) -> None:
        stage1 = int(round(float(self.params["stage1_fraction"]) * context.max_iterations))
        if self.stage == 1 and iteration + 1 >= stage1:
            self.start_stage2(context)

    def start_stage2(self, context: TrainingContext) -> None:
        """Label every training volume from the stage-1 model, then train on those labels."""
        self._decoder_mean = True
        try:
            labels = {case: stage2_labels(context.predict(case), context.target(case),
                                          float(self.params["uncertainty_threshold"]),
                                          self.params["uncertain_label"])
                      for case in context.cases}
        finally:
            self._decoder_mean = False
        self.labels = labels
        self.stage = 2
        self._apply_labels(context)
        if self.params["reset_optimizer"]:
            context.reset_optimizer(self.params["stage2_lr"])
        labelled = sum(int((lab != IGNORE).sum()) for lab in labels.values())
        total = sum(lab.size for lab in labels.values())
        foreground = sum(int(((lab != IGNORE) & (lab > 0)).sum()) for lab in labels.values())
        context.log(f"DMSPS stage 2: pseudo-labels for {counted(len(labels), 'volume')}, "
                    f"{labelled / max(total, 1):.1%} labelled, {foreground / max(total, 1):.1%} foreground")

    def _apply_labels(self, context: TrainingContext) -> None:
        for case in context.cases:
            if case not in self.labels:
                raise RuntimeError(f"DMSPS stage-2 labels lack training case '{case}'")
            context.replace_target(case, self.labels[case])

    def setup(self, context: TrainingContext) -> None:
        """After a resume into stage 2 the engine reloads the scribbles: put the pseudo-labels back."""
        if self.stage == 2:
            self._apply_labels(context)

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "labels": {case: _pack(lab) for case, lab in self.labels.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = int(state.get("stage", 1))
        self.labels = {case: _unpack(packed) for case, packed in state.get("labels", {}).items()}
