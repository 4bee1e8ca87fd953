"""3D V-Net (Milletari et al. 2016) as used by the scribble-supervision references.

The layout follows ``DMSPS:code/networks/vnet.py``: stage ``i`` has ``convs[i]`` 3x3x3
convolutions, stride-2 convolutions down, stride-2 transposed convolutions up, additive skips,
Dropout3d at the bottleneck and before the output convolution. Width, convolutions per stage,
number of downsamplings, normalisation and activation are arguments so that the CmFNet ablations
(CTn/MRn) and the baselines share one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cmfnet.training.networks.registry import register


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation '{kind}'")


def act_layer(kind: str, channels: int) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"unknown activation '{kind}'")


class ConvStage(nn.Sequential):
    """``n`` (conv 3x3x3, norm, activation) layers."""

    def __init__(self, n: int, in_ch: int, out_ch: int, norm: str = "batch", act: str = "relu") -> None:
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1),
                       norm_layer(norm, out_ch), act_layer(act, out_ch)]
        super().__init__(*layers)


class Down(nn.Sequential):
    """Stride-2 convolution that halves every spatial side and changes the width."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", act: str = "relu") -> None:
        super().__init__(nn.Conv3d(in_ch, out_ch, 2, stride=2), norm_layer(norm, out_ch),
                         act_layer(act, out_ch))


class Up(nn.Sequential):
    """Stride-2 transposed convolution that doubles every spatial side."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", act: str = "relu") -> None:
        super().__init__(nn.ConvTranspose3d(in_ch, out_ch, 2, stride=2), norm_layer(norm, out_ch),
                         act_layer(act, out_ch))


def stage_convs(n_convs: int | Sequence[int], downsamplings: int) -> list[int]:
    """Convolutions per encoder stage (``downsamplings + 1`` stages)."""
    if isinstance(n_convs, int):
        return [n_convs] * (downsamplings + 1)
    convs = list(n_convs)
    if len(convs) != downsamplings + 1:
        raise ValueError(f"n_convs needs one entry per stage ({downsamplings + 1} stages), got {convs}")
    return convs


class VNetEncoder(nn.Module):
    """Returns the feature map of every stage, finest first."""

    def __init__(self, in_channels: int, width: int, convs: list[int], norm: str, act: str,
                 max_width: int | None = None) -> None:
        super().__init__()
        self.widths = [min(width * 2 ** i, max_width or 10**9) for i in range(len(convs))]
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, n in enumerate(convs):
            in_ch = in_channels if i == 0 else self.widths[i]
            self.stages.append(ConvStage(n, in_ch, self.widths[i], norm, act))
            if i < len(convs) - 1:
                self.downs.append(Down(self.widths[i], self.widths[i + 1], norm, act))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features.append(x)
            if i < len(self.downs):
                x = self.downs[i](x)
        return features


class VNetDecoder(nn.Module):
    """Upsamples from the coarsest feature map, adding the encoder's skip at each level."""

    def __init__(self, widths: list[int], convs: list[int], num_classes: int, norm: str, act: str,
                 dropout: float) -> None:
        super().__init__()
        levels = len(widths) - 1
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], norm, act) for i in reversed(range(levels)))
        self.stages = nn.ModuleList(ConvStage(convs[i], widths[i], widths[i], norm, act)
                                    for i in reversed(range(levels)))
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv3d(widths[0], num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.dropout(features[-1])
        for up, stage, skip in zip(self.ups, self.stages, reversed(features[:-1])):
            x = stage(up(x) + skip)
        return self.head(self.dropout(x))


@register("vnet")
class VNet(nn.Module):
    """Single-branch V-Net; with several input channels it is the input-level fusion baseline."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16,
                 n_convs: int | Sequence[int] = (1, 2, 3, 3, 3), downsamplings: int = 4,
                 dropout: float = 0.5, norm: str = "batch", act: str = "relu") -> None:
        super().__init__()
        convs = stage_convs(n_convs, downsamplings)
        self.downsamplings = downsamplings
        self.encoder = VNetEncoder(in_channels, width, convs, norm, act)
        self.decoder = VNetDecoder(self.encoder.widths, convs, num_classes, norm, act, dropout)

    @property
    def size_divisor(self) -> int:
        """Every spatial side of the input must be a multiple of this."""
        return 2 ** self.downsamplings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@register("vnet_dual_decoder")
class DualDecoderVNet(nn.Module):
    """V-Net encoder shared by two V-Net decoders (DMSPS); ``forward`` is the main decoder alone.

    The auxiliary decoder's input features go through ``nn.Dropout3d``, which (unlike the
    reference's ``F.dropout3d`` with its default ``training=True``) is off in eval mode, so the
    stage-2 predictions are deterministic.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16,
                 n_convs: int | Sequence[int] = (1, 2, 3, 3, 3), downsamplings: int = 4,
                 dropout: float = 0.5, norm: str = "batch", act: str = "relu",
                 aux_feature_dropout: float = 0.5) -> None:  # DMSPS: Dropout(0.5) on every encoder map
        super().__init__()
        convs = stage_convs(n_convs, downsamplings)
        self.downsamplings = downsamplings
        self.encoder = VNetEncoder(in_channels, width, convs, norm, act)
        self.main_decoder = VNetDecoder(self.encoder.widths, convs, num_classes, norm, act, dropout)
        self.aux_decoder = VNetDecoder(self.encoder.widths, convs, num_classes, norm, act, dropout)
        self.feature_dropout = nn.Dropout3d(aux_feature_dropout)

    @property
    def size_divisor(self) -> int:
        return 2 ** self.downsamplings

    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(main logits, auxiliary logits) from one encoder pass."""
        features = self.encoder(x)
        return self.main_decoder(features), self.aux_decoder([self.feature_dropout(f) for f in features])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main_decoder(self.encoder(x))
