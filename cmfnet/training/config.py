"""The ``train:`` block every method of a table shares: engine defaults < preset < card (and ``--set``)."""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cmfnet.errors import InputError
from cmfnet.training.cards import Card, check_range, check_value


# ranges of the train block's values (their types come from TrainConfig's annotations)
_TRAIN_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "iterations": (lambda v: v >= 1, ">= 1"),
    "epochs": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "iterations_per_epoch": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "patch_size": (lambda v: len(v) == 3 and min(v) >= 1, "three positive sides (z, y, x)"),
    "optimizer": (lambda v: v in ("adam", "sgd"), "adam or sgd"),
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "schedule": (lambda v: v in ("constant", "poly", "auto"), "constant, poly or auto"),
    "fg_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "val_interval": (lambda v: v >= 0, ">= 0 (0: validate only at the end)"),
    "val_reference": (lambda v: v in ("label", "scribble"), "label or scribble"),
    "val_overlap": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "selection": (lambda v: v in ("best", "last", "ema"), "best, last or ema"),
    "ema_decay": (lambda v: 0 < v < 1, "in (0, 1)"),
    "checkpoint_interval": (lambda v: v >= 1, ">= 1"),
    "log_interval": (lambda v: v >= 1, ">= 1"),
    "seed": (lambda v: v >= 0, ">= 0"),
    "labelled_fraction": (lambda v: v is None or 0 < v < 1, "in (0, 1) or null"),
    "labelled_batch_size": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "labelled_seed": (lambda v: v >= 0, ">= 0"),
}
#: the semi-supervised regime's keys: a model's settings hold them only when labelled_fraction is
#: set, so scribble and mask models keep the hashes they had before the regime existed
SEMI_KEYS = ("labelled_fraction", "labelled_batch_size", "labelled_seed")


@dataclass
class TrainConfig:
    """The preset's ``train:`` block. Every method of a table trains with the same values."""

    iterations: int = 300
    epochs: int | None = None  # if set: iterations = epochs * iterations_per_epoch
    iterations_per_epoch: int | None = None  # default: ceil(training cases / batch size)
    batch_size: int = 2
    patch_size: list[int] = field(default_factory=lambda: [16, 64, 64])  # (z, y, x)
    optimizer: str = "adam"  # adam (paper) | sgd (WSL4MIS/DMSPS: momentum 0.9, poly schedule)
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "auto"  # constant | poly | auto (poly for sgd, constant for adam)
    fg_fraction: float = 0.5  # share of patches centred on a foreground-labelled voxel
    val_interval: int = 100  # iterations between validations (0: validate only at the end)
    val_reference: str = "label"  # label: dense labels of validation cases | scribble
    val_overlap: float = 0.25
    # which weights model.pt keeps: best (highest validation Dice) | last (the final weights; the
    # validations then only draw the learning curve) | ema (an exponential moving average of the
    # weights, which validation also scores: it damps the step-to-step swings of batch-2 training).
    # Best-of-a-few-cases picks lucky spikes.
    selection: str = "best"
    ema_decay: float = 0.99  # selection: ema; about 1 / (1 - decay) iterations of memory
    checkpoint_interval: int = 100
    log_interval: int = 20
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA (bfloat16, or float16 with loss scaling); ignored on CPU
    # CUDA only: let cuDNN pick the fastest convolution for the fixed patch size (then GPU runs are
    # not bit-reproducible; CPU runs are unaffected)
    cudnn_benchmark: bool = True
    compile: bool = False  # torch.compile the network for the training steps (any device)
    # supervision: semi (docs/semi-supervised.md): the share of a fold's training cases whose masks
    # are read; the rest contribute images only. In the train block, not the card, because every
    # method of a table must see the same labelled cases.
    labelled_fraction: float | None = None
    labelled_batch_size: int | None = None  # labelled patches per batch (None: half, rounded up)
    labelled_seed: int = 0  # draws the labelled cases; apart from `seed`, so seeds share them

    def settings(self) -> dict[str, Any]:
        """What a model's hash records of this block: every value, the semi keys only when set."""
        data = asdict(self)
        if self.labelled_fraction is None:
            for key in SEMI_KEYS:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: object = "train config") -> TrainConfig:
        """Check every value's type and range (one :class:`InputError` line naming it), then build."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(source, f"unknown train options {sorted(unknown)}")
        hints = typing.get_type_hints(cls)
        for name, value in data.items():
            check_value(source, f"train.{name}", value, hints[name])
            if name in _TRAIN_RANGES:
                rule, words = _TRAIN_RANGES[name]
                check_range(source, f"train.{name}", value, rule(value), words)
        return cls(**data)

    def total_iterations(self, n_train_cases: int) -> int:
        if self.epochs is None:
            return self.iterations
        per_epoch = self.iterations_per_epoch or math.ceil(n_train_cases / self.batch_size)
        return self.epochs * per_epoch


def resolve_train_config(card: Card, preset: dict[str, Any] | None,
                         preset_source: object = "train config") -> TrainConfig:
    """Engine defaults < the preset's train block < the card's train block (incl. --set train.*).

    The preset is checked on its own first, so that a bad value there is reported against it.
    """
    TrainConfig.from_dict(preset or {}, preset_source)
    return TrainConfig.from_dict({**(preset or {}), **card.train}, card.path)

