"""CmFNet: two modality-specific V-Nets plus a cross-modal branch (paper Section III-B/C, Fig. 2).

Stage indexing follows :class:`~cmfnet.training.networks.vnet.VNetEncoder`: ``features[i]`` is the output
of encoder stage ``i``, at 1/2^i resolution (stage 0 is the full-resolution stage before any
downsampling). The paper's ``f^i`` is the feature map "after the i-th down-sampling", so its
``f^1..f^3`` are our stages 1-3, and the CFE's "third layer" (the deepest level both branches
share when CT has three downsamplings) is stage 3 at 1/8 resolution. docs/cmfnet.md has the map.

* Branch ``b`` in {CT, MR}: a V-Net with ``n_b`` convolutions per stage and ``min(n_b, 4)``
  downsamplings (Table IV's CTn/MRn), its own decoder and output (``y_ct``, ``y_mr``).
* CFF (Eq. 1), stages 1-3: f_mm^i = PReLU(Conv3x3x3(Concat(f_ct^i, f_mr^i))).
* CFE (Eq. 2), stage 3: PReLU(DownConv(f_mm^3)) to 1/16 resolution, then three conv modules.
* Cross-modal decoder: V-Net up-path from the CFE output with additive skips from the CFF
  outputs at stages 3, 2, 1; stage 0 has no CFF (the paper fuses at three stages only), so the
  last level upsamples without a skip. Its output ``y_mm`` is what CmFNet predicts with.

Table VI options: ``cfe=False, cff=False`` is MFL (no cross-modal branch; ``y_mm`` is then the
CT branch output, which is what the paper's Table VI MFL row reports: it equals Table V's
CT3MR4 ``y_ct``); ``cfe=True, cff=False`` keeps the stage-3 fusion that feeds the CFE but gives
the decoder no skips; ``cfe=True, cff=True`` is the full network.
"""

from __future__ import annotations

import torch
from torch import nn

from cmfnet.training.networks.registry import register
from cmfnet.training.networks.vnet import ConvStage, Up, VNetDecoder, VNetEncoder, act_layer, stage_convs

#: stages whose CT and MR features the CFF fuses (the paper's f^1..f^3)
CFF_STAGES = (1, 2, 3)
#: the stage the CFE enhances and downsamples
CFE_STAGE = 3


def branch_downsamplings(n_convs: int) -> int:
    """Table IV: CTn/MRn have n convolutions per stage and min(n, 4) downsamplings."""
    return min(n_convs, 4)


class ModalityBranch(nn.Module):
    """A one-channel V-Net whose encoder features are also handed to the cross-modal branch."""

    def __init__(self, n_convs: int, downsamplings: int, width: int, num_classes: int, norm: str,
                 act: str, dropout: float) -> None:
        super().__init__()
        convs = stage_convs(n_convs, downsamplings)
        self.downsamplings = downsamplings
        self.encoder = VNetEncoder(1, width, convs, norm, act)
        self.decoder = VNetDecoder(self.encoder.widths, convs, num_classes, norm, act, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.encoder(x)
        return self.decoder(features), features


class FusionConv(nn.Sequential):
    """Eq. 1: concatenation, one 3x3x3 convolution, PReLU (no normalisation, as printed)."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.Conv3d(2 * channels, channels, 3, padding=1), act_layer("prelu", channels))

    def forward(self, f_ct: torch.Tensor, f_mr: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([f_ct, f_mr], dim=1))


class CrossModalEnhancement(nn.Module):
    """Eq. 2 and Fig. 2(c): stride-2 down-convolution with PReLU, then three conv modules."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, act: str) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv3d(in_ch, out_ch, 2, stride=2), act_layer("prelu", out_ch))
        self.convs = ConvStage(3, out_ch, out_ch, norm, act)

    def forward(self, f_mm: torch.Tensor) -> torch.Tensor:
        return self.convs(self.down(f_mm))


class CrossModalDecoder(nn.Module):
    """V-Net up-path whose skip at a level may be absent (stage 0 always, all when CFF is off)."""

    def __init__(self, widths: list[int], n_convs: int, num_classes: int, norm: str, act: str,
                 dropout: float) -> None:
        super().__init__()
        levels = len(widths) - 1
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], norm, act) for i in reversed(range(levels)))
        self.stages = nn.ModuleList(ConvStage(n_convs, widths[i], widths[i], norm, act)
                                    for i in reversed(range(levels)))
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv3d(widths[0], num_classes, 1)

    def forward(self, bottleneck: torch.Tensor, skips: dict[int, torch.Tensor]) -> torch.Tensor:
        x = self.dropout(bottleneck)
        for level, (up, stage) in zip(reversed(range(len(self.ups))), zip(self.ups, self.stages)):
            x = up(x)
            if level in skips:
                x = x + skips[level]
            x = stage(x)
        return self.head(self.dropout(x))


@register("cmfnet")
class CmFNet(nn.Module):
    """Triple-branch network; ``forward`` returns ``{"y_ct", "y_mr", "y_mm"}`` logits.

    Input channel 0 is CT and channel 1 MR; a one-channel input (CT-only data such as WORD) is
    fed to both branches, as the paper does.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, ct_convs: int = 3,
                 mr_convs: int = 4, ct_downsamplings: int | None = None,
                 mr_downsamplings: int | None = None, mm_convs: int = 3, cfe: bool = True,
                 cff: bool = True, dropout: float = 0.5, norm: str = "batch", act: str = "relu") -> None:
        super().__init__()
        if in_channels not in (1, 2):
            raise ValueError(f"CmFNet takes 1 (CT, fed to both branches) or 2 (CT, MR) input channels, "
                             f"got {in_channels}: pick two with --set channels=[0,1] (CT first, then MR)")
        if cff and not cfe:
            raise ValueError("cff=True needs cfe=True: the CFF skips feed the decoder that starts at the CFE")
        ct_ds = branch_downsamplings(ct_convs) if ct_downsamplings is None else ct_downsamplings
        mr_ds = branch_downsamplings(mr_convs) if mr_downsamplings is None else mr_downsamplings
        self.cross_modal = cfe
        if self.cross_modal and min(ct_ds, mr_ds) < CFE_STAGE:
            raise ValueError(f"the cross-modal branch fuses stage {CFE_STAGE}: both branches need at least "
                             f"{CFE_STAGE} downsamplings (got CT {ct_ds}, MR {mr_ds})")
        self.ct = ModalityBranch(ct_convs, ct_ds, width, num_classes, norm, act, dropout)
        self.mr = ModalityBranch(mr_convs, mr_ds, width, num_classes, norm, act, dropout)
        self.fuse = nn.ModuleDict()
        if self.cross_modal:
            widths = self.ct.encoder.widths[:CFE_STAGE + 1] + [width * 2 ** (CFE_STAGE + 1)]
            for stage in (CFF_STAGES if cff else (CFE_STAGE,)):
                self.fuse[str(stage)] = FusionConv(widths[stage])
            self.cfe = CrossModalEnhancement(widths[CFE_STAGE], widths[CFE_STAGE + 1], norm, act)
            self.mm_decoder = CrossModalDecoder(widths, mm_convs, num_classes, norm, act, dropout)
        self.skip_stages = CFF_STAGES if cff else ()
        self._size_divisor = 2 ** max(ct_ds, mr_ds, CFE_STAGE + 1 if self.cross_modal else 0)

    @property
    def size_divisor(self) -> int:
        """Every spatial side of the input must be a multiple of this."""
        return self._size_divisor

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ct_image = x[:, :1]
        mr_image = x[:, 1:2] if x.shape[1] > 1 else ct_image
        y_ct, f_ct = self.ct(ct_image)
        y_mr, f_mr = self.mr(mr_image)
        if not self.cross_modal:
            return {"y_ct": y_ct, "y_mr": y_mr, "y_mm": y_ct}
        fused = {int(stage): module(f_ct[int(stage)], f_mr[int(stage)]) for stage, module in self.fuse.items()}
        bottleneck = self.cfe(fused[CFE_STAGE])
        y_mm = self.mm_decoder(bottleneck, {stage: fused[stage] for stage in self.skip_stages})
        return {"y_ct": y_ct, "y_mr": y_mr, "y_mm": y_mm}
