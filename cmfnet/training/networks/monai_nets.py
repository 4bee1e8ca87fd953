"""Table III's fully supervised peers, taken from MONAI rather than written by hand.

MONAI's networks are the field's maintained reference implementations; these classes only adapt
them to the registry: ``in_channels``/``num_classes`` as the registry passes them, the suite's
option names where they mean the same thing (``width``, ``downsamplings``, ``dropout``, so that a
preset's ``network:`` block such as ``{width: 8, dropout: 0}`` reaches these rows as it reaches
every other card), and a ``size_divisor`` for the engine's patch-size check.

MONAI is imported when a network is built, not when this module is imported: the registry (and
so every card check, and ``import cmfnet``) must not pay seconds of import time for networks most
runs never build. Without MONAI, building one of these says so in one line.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import nn

from cmfnet.errors import InputError
from cmfnet.training.networks.registry import register

#: nnU-Net caps the width of 3D stages at 320 channels; DynUNet follows it here
NNUNET_MAX_WIDTH = 320
#: MONAI's UNETR embeds the input in 16x16x16 patches
UNETR_PATCH = 16
#: the distributions these networks import, pinned as in pyproject.toml (einops: MONAI's UNETR)
PINS = {"monai": "monai==1.6.1", "einops": "einops==0.8.2"}


def monai_nets(*also: str) -> ModuleType:
    """``monai.networks.nets`` (and the modules ``also`` names, which MONAI imports only when a
    network needs them), or one line naming the missing package and how to install it."""
    for module in ("monai", *also):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise InputError(module, f"not installed; the MONAI networks need it: pip install {PINS[module]} "
                                     f"(pip install -e . installs it)") from err
    return importlib.import_module("monai.networks.nets")


def level_widths(width: int, downsamplings: int, cap: int | None = None) -> list[int]:
    """Channels per resolution level, doubling from ``width`` as the suite's V-Net, up to ``cap``."""
    widths = [width * 2 ** i for i in range(downsamplings + 1)]
    return widths if cap is None else [min(w, cap) for w in widths]


class _StridedMonaiNet(nn.Module):
    """A MONAI network ``self.net`` that downsamples ``self.downsamplings`` times by 2: inputs
    must be multiples of 2**downsamplings, and its output is the logits as they are."""

    downsamplings: int
    net: nn.Module

    @property
    def size_divisor(self) -> int:
        return 2 ** self.downsamplings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register("monai_unet")
class MonaiUNet(_StridedMonaiNet):
    """MONAI's ``UNet`` with residual units: Table III's ResUNet (Zhang et al. 2018).

    Stride-2 convolutions down, transposed convolutions up, ``num_res_units`` residual units per
    level (0 gives MONAI's plain U-Net), instance normalisation and PReLU (MONAI's defaults).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, downsamplings: int = 4,
                 num_res_units: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.downsamplings = downsamplings
        self.net = monai_nets().UNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes,
                                     channels=level_widths(width, downsamplings), strides=[2] * downsamplings,
                                     num_res_units=num_res_units, dropout=dropout)


@register("segresnet")
class SegResNet(_StridedMonaiNet):
    """MONAI's ``SegResNet`` (Myronenko 2018): residual encoder, light decoder, group normalisation.

    ``blocks_down`` gives the residual blocks per encoder level (one level per entry, so
    ``len(blocks_down) - 1`` downsamplings), ``blocks_up`` those per decoder level (one fewer).
    Group normalisation uses gcd(8, width) groups, so any width divides into them.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16,
                 blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] = (1, 1, 1),
                 dropout: float = 0.0) -> None:
        super().__init__()
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(f"blocks_up needs one entry per decoder level ({len(blocks_down) - 1}), "
                             f"got {list(blocks_up)}")
        self.downsamplings = len(blocks_down) - 1
        self.net = monai_nets().SegResNet(
            spatial_dims=3, init_filters=width, in_channels=in_channels, out_channels=num_classes,
            dropout_prob=dropout or None, norm=("GROUP", {"num_groups": math.gcd(8, width)}),
            blocks_down=tuple(blocks_down), blocks_up=tuple(blocks_up))


@register("dynunet")
class DynUNet(_StridedMonaiNet):
    """MONAI's ``DynUNet``, the nnU-Net-style U-Net: two 3x3x3 conv blocks per level, strided
    convolutions down, instance normalisation, leaky ReLU, widths capped at 320 as nnU-Net does.

    ``res_block`` swaps the plain blocks for residual ones. Deep supervision stays off: the engine
    trains one output.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, downsamplings: int = 4,
                 res_block: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.downsamplings = downsamplings
        strides = [1] + [2] * downsamplings
        self.net = monai_nets().DynUNet(
            spatial_dims=3, in_channels=in_channels, out_channels=num_classes, kernel_size=[3] * len(strides),
            strides=strides, upsample_kernel_size=strides[1:],
            filters=level_widths(width, downsamplings, NNUNET_MAX_WIDTH), dropout=dropout or None,
            res_block=res_block)


@register("unetplusplus")
class UNetPlusPlus(nn.Module):
    """MONAI's ``BasicUNetPlusPlus`` (Zhou et al. 2018): nested, densely connected skip pathways.

    Five levels (four max-pool downsamplings, fixed by MONAI) with MONAI's width pattern
    (32, 32, 64, 128, 256, 32) scaled to ``width`` = its first entry. Deep supervision stays off:
    the engine trains one output, the full-depth one (MONAI's ``x_0_4``).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        features = (width, width, 2 * width, 4 * width, 8 * width, width)
        self.net = monai_nets().BasicUNetPlusPlus(spatial_dims=3, in_channels=in_channels, out_channels=num_classes,
                                                  features=features, dropout=dropout)

    @property
    def size_divisor(self) -> int:
        return 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.net(x)  # a one-element list without deep supervision
        return logits


@register("unetr")
class UNETR(nn.Module):
    """MONAI's ``UNETR`` (Hatamizadeh et al. 2022): a ViT encoder on 16^3 patches, a CNN decoder.

    The position embedding is learnt for one input size, so **the card must set ``img_size`` to
    the training ``patch_size`` (z, y, x)**; sliding-window prediction then feeds it windows of
    exactly that size. Any other input is refused with a message that says so. ``width`` is
    MONAI's ``feature_size`` (the decoder's base width); the transformer defaults (hidden size
    192, 6 heads, MLP 768, MONAI's 12 layers) are a small version of the paper's ViT-B (768, 12,
    3072), which a card may set back.
    """

    def __init__(self, in_channels: int, num_classes: int, img_size: Sequence[int] | None = None,
                 width: int = 16, hidden_size: int = 192, num_heads: int = 6, mlp_dim: int = 768,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if img_size is None or len(img_size) != 3 or any(side % UNETR_PATCH for side in img_size):
            raise ValueError(f"unetr needs img_size = the training patch_size (z, y, x), each side a multiple "
                             f"of {UNETR_PATCH}, e.g. network.img_size=[16, 32, 32]; got {img_size}")
        self.img_size = tuple(img_size)
        self.net = monai_nets("einops").UNETR(in_channels=in_channels, out_channels=num_classes, img_size=self.img_size,
                                      feature_size=width, hidden_size=hidden_size, mlp_dim=mlp_dim,
                                      num_heads=num_heads, dropout_rate=dropout)

    @property
    def size_divisor(self) -> int:
        return UNETR_PATCH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"unetr was built for {list(self.img_size)} inputs (network.img_size) but got "
                             f"{list(x.shape[2:])}: set network.img_size to train.patch_size")
        return self.net(x)
