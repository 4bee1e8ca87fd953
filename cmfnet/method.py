"""Methods: a plugin (a small class) plus a card (``methods/*.yaml``, read by :mod:`cmfnet.cards`).

A plugin module defines one subclass of :class:`Method`. It says how one training step turns a
batch into a loss and, if it needs to, which network it builds and what it predicts with. The
training engine (:mod:`cmfnet.engine`) owns everything methods share: sampling, optimiser and
schedule, EMA teacher, checkpoints and resume, validation and logging.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

# Card, check_value and check_network_options are used below; check_range, counted, load_card
# and parse_override are re-exported for engine.py and baselines/, whose owners still import them
# from here (new code imports them from cmfnet.cards).
from cmfnet.cards import (Card, check_network_options, check_range, check_value, counted,  # noqa: F401
                          load_card, parse_override)
from cmfnet.errors import InputError
from cmfnet.networks import build_network

if TYPE_CHECKING:
    from cmfnet.engine import Trainer


@dataclass
class Batch:
    """One training batch of patches.

    ``target`` holds scribble labels (255 = unlabelled) or dense labels, by the card's
    supervision. ``boxes`` gives each patch's position in the engine's stored training volume
    ``trainer.volumes[case_ids[i]]`` so plugins with per-voxel state (S2L) can crop it.
    """

    image: torch.Tensor  # (B, C, z, y, x) float
    target: torch.Tensor  # (B, z, y, x) long
    case_ids: list[str]
    boxes: list[tuple[slice, slice, slice]]


@dataclass
class StepInfo:
    """What a loss may depend on besides the batch."""

    iteration: int  # 0-based index of the current step
    max_iterations: int
    teacher: nn.Module | None = None
    extras: dict[str, Any] = field(default_factory=dict)


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

    def __init__(self, card: Card) -> None:
        unknown = set(card.params) - set(self.defaults)
        if unknown:
            raise InputError(card.path, f"unknown params for plugin '{self.name}': {sorted(unknown)}")
        for name, value in card.params.items():
            check_value(card.path, f"params.{name}", value, self.param_type(name))
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

    def setup(self, trainer: Trainer) -> None:
        """Called once before training starts (after a resume has restored state)."""

    def after_step(self, trainer: Trainer, iteration: int) -> None:
        """Called after each optimiser step (``iteration`` is the step just done)."""

    def state_dict(self) -> dict[str, Any]:
        """Per-method state that must survive a resume.

        Tensors and plain types only, so that ``last.pt`` loads with ``weights_only=True``. The
        engine does not store training targets: a plugin that replaces
        ``trainer.volumes[case].target`` keeps the new targets here and puts them back in
        :meth:`setup` (as DMSPS does).
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def _import_plugin_module(spec: str, card_path: Path):  # noqa: ANN202 - a module
    if spec.endswith(".py"):
        file = (card_path.parent / spec).resolve()
        if not file.is_file():
            raise InputError(card_path, f"plugin file {file} not found")
        module_name = f"cmfnet_plugin_{file.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, file)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as err:
        raise InputError(card_path, f"cannot import plugin '{spec}' ({err})") from None


def load_method(card: Card) -> Method:
    """Instantiate the card's plugin: the one :class:`Method` subclass its module defines."""
    module = _import_plugin_module(card.plugin, card.path)
    classes = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and issubclass(obj, Method) and obj.__module__ == module.__name__]
    if len(classes) != 1:
        raise InputError(card.path, f"plugin '{card.plugin}' must define exactly one Method subclass, "
                                    f"found {len(classes)}")
    return classes[0](card)
