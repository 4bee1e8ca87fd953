"""The method contract: what a plugin receives from the engine and what it must provide.

A plugin module defines one subclass of :class:`Method`. It says how one training step turns a
:class:`Batch` into a loss and, if it needs to, which network it builds and what it predicts with.
The training engine (:mod:`cmfnet.training.engine`) owns everything methods share: sampling,
optimiser and schedule, EMA teacher, checkpoints and resume, validation and logging.

A plugin never sees the engine. Its hooks receive a :class:`TrainingContext`, an explicit and small
view of the run (in the spirit of benchopt's ``set_objective``): iteration counts, class count, read
access to the training volumes, one sanctioned way to replace a case's training target, whole-volume
prediction, an optimiser reset and logging. ``tests/test_architecture.py`` checks that no plugin
imports the engine.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from cmfnet.errors import InputError
from cmfnet.training.cards import Card, check_network_options, check_value
from cmfnet.training.networks import build_network
from cmfnet.training.sampling import TrainVolume

if TYPE_CHECKING:
    from cmfnet.data.dataset import Dataset
    from cmfnet.training.config import TrainConfig

#: voxel spacing (z, y, x) in mm
Spacing = tuple[float, float, float]


@dataclass
class Batch:
    """One training batch of patches.

    ``target`` holds scribble labels (255 = unlabelled) or dense labels, by the card's
    supervision. ``labelled`` (B,) bool says which patches come from a case whose supervision
    training reads: all of them, except under ``supervision: semi``, where the labelled patches
    come first and the unlabelled ones (images only, target all 255) follow. ``boxes`` gives each
    patch's position in its training volume (``case_ids[i]``), so plugins with per-voxel state
    (S2L) can crop it. ``spacing`` is each patch's voxel spacing, read
    from its case's image header, as the metrics read it.
    """

    image: torch.Tensor  # (B, C, z, y, x) float
    target: torch.Tensor  # (B, z, y, x) long
    case_ids: list[str]
    boxes: list[tuple[slice, slice, slice]]
    spacing: list[Spacing]
    labelled: torch.Tensor | None = None  # None: every patch is labelled

    def __post_init__(self) -> None:
        if self.labelled is None:
            self.labelled = torch.ones(len(self.case_ids), dtype=torch.bool, device=self.image.device)


@dataclass(frozen=True)
class StepInfo:
    """What a loss may depend on besides the batch."""

    iteration: int  # 0-based index of the current step
    max_iterations: int
    teacher: nn.Module | None = None


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class TrainingContext:
    """What a plugin's :meth:`Method.setup` and :meth:`Method.after_step` may use of the run.

    The engine builds it from explicit values and callables; nothing else of the engine is
    reachable from here.
    """

    def __init__(self, *, max_iterations: int, num_classes: int, channel_names: list[str],
                 volumes: Mapping[str, TrainVolume], replace_target: Callable[[str, np.ndarray], None],
                 predict: Callable[[str], torch.Tensor],
                 reset_optimizer: Callable[[float | None], None],
                 log: Callable[[str], None]) -> None:
        self.max_iterations = max_iterations
        self.num_classes = num_classes
        self.channel_names = list(channel_names)
        self._volumes = volumes
        self._replace_target = replace_target
        self._predict = predict
        self._reset_optimizer = reset_optimizer
        self._log = log

    @property
    def cases(self) -> list[str]:
        """The fold's training cases, in the split's order."""
        return list(self._volumes)

    def image(self, case: str) -> np.ndarray:
        """A training case's normalised (C, z, y, x) image, padded to a patch (read-only)."""
        return _read_only(self._volumes[case].image)

    def target(self, case: str) -> np.ndarray:
        """A training case's current (z, y, x) target: scribbles, mask or pseudo-labels (read-only)."""
        return _read_only(self._volumes[case].target)

    def replace_target(self, case: str, target: np.ndarray) -> None:
        """Train on ``target`` (uint8, 255 = unlabelled) for ``case`` from now on (DMSPS stage 2).

        The engine does not checkpoint targets: a plugin that replaces them keeps them in its
        :meth:`Method.state_dict` and replaces them again in :meth:`Method.setup` after a resume.
        """
        current = self._volumes[case].target
        if target.shape != current.shape:
            raise ValueError(f"new target of '{case}' has shape {target.shape}, the volume {current.shape}")
        self._replace_target(case, np.ascontiguousarray(target, dtype=np.uint8))

    def predict(self, case: str) -> torch.Tensor:
        """Softmax probabilities (K, z, y, x) of a training case's whole volume: eval mode, no
        gradient, the plugin's :meth:`Method.logits`, on the CPU."""
        return self._predict(case)

    def reset_optimizer(self, lr: float | None = None) -> None:
        """A fresh optimiser and learning-rate schedule from the current iteration (None: the preset's lr)."""
        self._reset_optimizer(lr)

    def log(self, message: str) -> None:
        """One line in the training log, prefixed with the method, fold and iteration."""
        self._log(message)


class Method:
    """Base plugin. Subclasses set ``name`` and ``defaults`` and implement :meth:`loss`."""

    name: ClassVar[str] = "method"
    #: the plugin's hyper-parameters and their defaults; a card's ``params`` override them
    defaults: ClassVar[dict[str, Any]] = {}
    #: EMA decay of a teacher the engine maintains for this method (None: no teacher)
    teacher_decay: ClassVar[float | None] = None
    #: params that change only what a trained model predicts, never its training (e.g. which
    #: output head); ``cmfnet predict --set params.<name>=...`` may change these and nothing else
    inference_params: ClassVar[frozenset[str]] = frozenset()
    #: the type of a param whose default does not tell it (a None default, an int-or-list option);
    #: every other param must have the type of its default (an int may stand for a float)
    param_types: ClassVar[dict[str, Any]] = {}
    #: whether the card's ``network:`` block (and a preset's ``network:`` overrides) builds this
    #: method's network; False for :class:`ExternalMethod`, whose framework plans its own
    uses_network: ClassVar[bool] = True

    def __init__(self, card: Card) -> None:
        unknown = set(card.params) - set(self.defaults)
        if unknown:
            raise InputError(card.path, f"unknown params for plugin '{self.name}': {sorted(unknown)}")
        for name, value in card.params.items():
            check_value(card.path, f"params.{name}", value, self.param_type(name))
        if self.uses_network:
            check_network_options(card.path, card.network)
        self.card = card
        self.params: dict[str, Any] = {**copy.deepcopy(self.defaults), **card.params}

    @classmethod
    def param_type(cls, name: str) -> Any:
        """The type a card's ``params.<name>`` must have: ``param_types``, else its default's type."""
        if name in cls.param_types:
            return cls.param_types[name]
        default = cls.defaults[name]
        return Any if default is None else float if isinstance(default, float) else type(default)

    # -- network and prediction ---------------------------------------------------------------
    def build_network(self, in_channels: int, num_classes: int) -> nn.Module:
        return build_network(self.card.network, in_channels, num_classes)

    def logits(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """The logits used for validation and inference."""
        return model(image)

    # -- training ------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss of one step and its named parts (floats, for the training log)."""
        raise NotImplementedError

    def setup(self, context: TrainingContext) -> None:
        """Called once before training starts (after a resume has restored state)."""

    def after_step(self, context: TrainingContext, iteration: int) -> None:
        """Called after each optimiser step (``iteration`` is the step just done)."""

    def state_dict(self) -> dict[str, Any]:
        """Per-method state that must survive a resume.

        Tensors and plain types only, so that ``last.pt`` loads with ``weights_only=True``. The
        engine does not store training targets: a plugin that replaces them
        (:meth:`TrainingContext.replace_target`) keeps the new targets here and replaces them again
        in :meth:`setup` (as DMSPS does).
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def training_card(self) -> dict[str, Any]:
        """The card as a model's settings record it: without ``network`` when the method ignores it,
        so that a preset's ``network:`` block neither retrains nor refuses such a model."""
        card = self.card.to_dict()
        if not self.uses_network:
            card.pop("network", None)
        return card


@dataclass(frozen=True)
class ExternalRun:
    """What an :class:`ExternalMethod` trains on: one fold of a dataset, into its own folder."""

    dataset: Dataset
    fold: int
    out: Path  # the model folder; the method keeps its work files under it
    config: TrainConfig  # the preset's train block (an external framework uses little of it)
    device: torch.device
    channels: list[int]  # the card's input channels, indices into the dataset's
    log: Callable[[str], None]


class ExternalMethod(Method):
    """A method whose training and inference an external framework does (nnU-Net: ``baselines.nnunet``).

    The engine's patch sampler, optimiser, schedule and validation do not apply; ``cmfnet train``
    calls :meth:`fit` instead of the engine, and ``cmfnet predict`` calls :meth:`build_predictor_network`
    and :meth:`segment` instead of the sliding window. The contract that keeps the row comparable
    is unchanged: ``model.pt`` holds ``{"format", "weights", "meta"}`` (tensors and plain types,
    loadable with ``torch.load(weights_only=True)``), training reads the fold's training cases (and
    its validation cases for validation) only, and prediction writes each case on its own grid, so
    ``cmfnet evaluate`` scores the row like every other.

    The card's ``network:`` block is ignored (``uses_network = False``): the framework plans its
    network from the data. Of the preset's ``train:`` block only ``seed`` and ``val_reference``
    apply; the framework's schedule comes from the card's ``params``.

    Import the framework lazily, inside the hooks, so that cards, provenance and ``cmfnet validate``
    work where it is not installed, and turn its absence into one :class:`InputError` line.
    """

    uses_network: ClassVar[bool] = False

    def loss(self, model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        raise TypeError(f"'{self.name}' trains through an external framework, not the engine's loss")

    def fit(self, run: ExternalRun) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Train on ``run``; return the network's weights (a state dict of tensors) and the plain
        (JSON-able) record :meth:`build_predictor_network` and :meth:`segment` need (``meta["external"]``).

        The record's optional ``train_log`` (rows of ``iteration``, ``lr``, losses and ``val_dice``)
        becomes ``train_log.csv``, which ``cmfnet curves`` reads for every model; ``iterations`` and
        ``patch_size`` are copied into the meta.
        """
        raise NotImplementedError

    def build_predictor_network(self, external: dict[str, Any]) -> nn.Module:
        """The untrained network ``meta["external"]`` describes; ``model.pt``'s weights are loaded into it."""
        raise NotImplementedError

    def segment(self, network: nn.Module, image: np.ndarray, spacing: Spacing, external: dict[str, Any],
                device: torch.device, overlap: float) -> np.ndarray:
        """Labels (uint8, z, y, x) of a raw (C, z, y, x) image of the model's channels at ``spacing``
        (z, y, x mm), on the image's own grid: the framework normalises and resamples itself."""
        raise NotImplementedError


