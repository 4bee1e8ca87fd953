"""CmFNet's hybrid supervision (paper Section III-D, Eq. 3-9) as a method plugin.

L_total = L_ssl + L_imr + L_imc, each switchable from the card's ``params``:

* L_ssl (Eq. 4): pCE on y_ct, y_mr and y_mm. Under mask supervision the target has no
  unlabelled voxel, so the same call is plain cross-entropy on the dense labels (Table III).
* L_imr (Eq. 7): lambda_ct * L_mcrf(y_mm | CT) + lambda_mr * L_mcrf(y_mm | MR). Eq. 7 prints
  L_mcrf(y_mm) twice; the text says the terms constrain the prediction "through the images of
  each modality", so we read them as two CRF terms on y_mm whose kernels compare CT and MR
  intensities respectively (Eq. 6: axial, sagittal and coronal views averaged).
* L_imc (Eq. 8): alpha1 * MSE(p_mm, p_ct) + alpha2 * MSE(p_mm, p_mr) on softmax probabilities.
  The paper calls the cross-modal branch "a suitable reference value", so p_mm is detached:
  the consistency pulls the modality-specific branches towards it, not the reverse.

Without the cross-modal branch (Table V/VI "MFL"), the network's y_mm is y_ct: L_ssl covers
y_ct and y_mr once each, L_imc becomes the mutual term (alpha1 + alpha2)/2 * MSE(p_ct, p_mr)
(no reference branch exists, and the paper reports mutual gains), and L_imr, defined on the
cross-modal prediction, is skipped. A plain single-output network (Table IV's CTn/MRn V-Nets)
gets L_ssl and, if switched on, L_imr on its output.

Input channel 0 is CT and channel 1 MR; with one channel (CT-only data) it serves both terms.
The CRF's spatial bandwidth is in mm: each patch's spacing comes from ``Batch.spacing`` (its
case's image header, as the metrics read it).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cmfnet.errors import InputError
from cmfnet.training.losses import partial_ce
from cmfnet.training.losses.crf import multiview_crf_loss
from cmfnet.training.cards import Card
from cmfnet.training.contract import Batch, Method, StepInfo

OUTPUTS = ("mm", "ct", "mr")


class CmFNetHybrid(Method):
    """CmFNet's loss L_ssl + L_imr + L_imc; predicts with y_mm (or the head named by ``output``)."""

    name: ClassVar[str] = "cmfnet"
    inference_params: ClassVar[frozenset[str]] = frozenset({"output"})
    defaults: ClassVar[dict[str, Any]] = {
        "use_ssl": True,
        "use_imr": True,
        "use_imc": True,
        "lambda_ct": 0.2,  # Eq. 7, CT-intensity CRF term
        "lambda_mr": 0.2,  # Eq. 7, MR-intensity CRF term
        "alpha1": 0.8,  # Eq. 8, y_mm vs y_ct
        "alpha2": 0.8,  # Eq. 8, y_mm vs y_mr
        "crf_radius": 5,  # window radius, voxels of the CRF grid (the references' 5)
        "crf_sigma_xy_mm": 15.0,  # spatial bandwidth in mm (~ the references' 6 px on NPC's ×2 grid)
        "crf_sigma_intensity": 0.1,  # in normalised intensity units (dataset.json normalisation)
        "crf_downsample": [1, 2, 2],  # (z, y, x) pooling before the CRF
        "output": "mm",  # the head logits() returns: mm (the paper), ct or mr (Table V)
    }
    param_types: ClassVar[dict[str, Any]] = {"crf_downsample": list[int]}

    def __init__(self, card: Card) -> None:
        super().__init__(card)
        p = self.params
        if p["output"] not in OUTPUTS:
            raise InputError(card.path, f"params.output must be one of {list(OUTPUTS)}, got {p['output']!r}")
        for key in ("lambda_ct", "lambda_mr", "alpha1", "alpha2"):
            if not isinstance(p[key], (int, float)) or p[key] < 0:
                raise InputError(card.path, f"params.{key} must be a number >= 0, got {p[key]!r}")
        if p["crf_radius"] < 1 or p["crf_sigma_xy_mm"] <= 0 or p["crf_sigma_intensity"] <= 0:
            raise InputError(card.path, "params.crf_radius must be >= 1 and the CRF sigmas > 0")
        if not (p["use_ssl"] or p["use_imr"] or p["use_imc"]):
            raise InputError(card.path, "params switch every loss term off (use_ssl, use_imr, use_imc)")
        if len(p["crf_downsample"]) != 3 or min(p["crf_downsample"]) < 1:
            raise InputError(card.path, f"params.crf_downsample must be three factors >= 1 (z, y, x), "
                                        f"got {p['crf_downsample']!r}")

    # -- prediction ----------------------------------------------------------------------------
    def logits(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        out = model(image)
        if isinstance(out, torch.Tensor):
            if self.params["output"] != "mm":
                raise ValueError(f"params.output={self.params['output']!r} needs a CmFNet network; "
                                 "this network has a single output")
            return out
        return out[f"y_{self.params['output']}"]

    # -- training ------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        p = self.params
        out = model(batch.image)
        if isinstance(out, torch.Tensor):
            branches, fused, mfl = [out], out, False
        else:
            mfl = out["y_mm"] is out["y_ct"]
            branches = [out["y_ct"], out["y_mr"]] + ([] if mfl else [out["y_mm"]])
            fused = None if mfl else out["y_mm"]
        terms: dict[str, torch.Tensor] = {}
        if p["use_ssl"]:
            terms["ssl"] = torch.stack([partial_ce(y, batch.target).float() for y in branches]).sum()
        if p["use_imr"] and fused is not None:
            terms.update(self._intra_modal(fused, batch))
        if p["use_imc"] and not isinstance(out, torch.Tensor):
            terms["imc"] = self._inter_modal(out, mfl)
        if not terms:
            raise ValueError("no loss term applies to this network with these params")
        total = torch.stack(list(terms.values())).sum()
        return total, {name: float(value.detach()) for name, value in terms.items()}

    def _intra_modal(self, y_mm: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """Eq. 7: one multi-view CRF term per modality's intensities, on the cross-modal prediction."""
        p = self.params
        image = batch.image
        mr_channel = 1 if image.shape[1] > 1 else 0
        weights = {"imr_ct": (p["lambda_ct"], 0), "imr_mr": (p["lambda_mr"], mr_channel)}
        active = {name: wc for name, wc in weights.items() if wc[0] > 0}
        if not active:
            return {}
        channels = sorted({channel for _, channel in active.values()})
        losses = multiview_crf_loss(y_mm, image[:, channels], batch.spacing, p["crf_downsample"],
                                    p["crf_radius"], p["crf_sigma_xy_mm"], p["crf_sigma_intensity"])
        return {name: weight * losses[channels.index(channel)] for name, (weight, channel) in active.items()}

    def _inter_modal(self, out: dict[str, torch.Tensor], mfl: bool) -> torch.Tensor:
        """Eq. 8 on softmax probabilities, the cross-modal prediction detached as the reference."""
        p = self.params
        p_ct = torch.softmax(out["y_ct"].float(), dim=1)
        p_mr = torch.softmax(out["y_mr"].float(), dim=1)
        if mfl:
            return 0.5 * (p["alpha1"] + p["alpha2"]) * F.mse_loss(p_ct, p_mr)
        p_mm = torch.softmax(out["y_mm"].float(), dim=1).detach()
        return p["alpha1"] * F.mse_loss(p_ct, p_mm) + p["alpha2"] * F.mse_loss(p_mr, p_mm)
