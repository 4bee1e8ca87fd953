"""Methods: a plugin (a small class) plus a card (``methods/*.yaml``).

A plugin module defines one subclass of :class:`Method`. It says how one training step turns a
batch into a loss and, if it needs to, which network it builds and what it predicts with. The
training engine (:mod:`cmfnet.engine`) owns everything methods share: sampling, optimiser and
schedule, EMA teacher, checkpoints and resume, validation and logging.

A card names the plugin and sets its options::

    name: pCE                 # the row label in tables
    plugin: baselines.pce     # dotted module, or a path to a .py file relative to the card
    supervision: scribble     # scribble | mask
    scribble_variant: sim     # which scribblesTr/<variant> to train on
    fusion: input             # input (channels stacked) | cross-modal
    network: {arch: vnet, width: 16, dropout: 0.5}
    channels: null            # input channels fed to the network (null: all; [0]: CT only)
    params: {}                # the plugin's own hyper-parameters (over its ``defaults``)
    train: {}                 # overrides of the preset's training block, if the method needs them

Ablations and sweeps are *variant files*: overrides of one base card, expanded by the pipeline,
never hand-copied cards::

    extends: cmfnet.yaml      # the base card, relative to this file
    table: table5             # the table these rows belong to
    variants:                 # explicit variants: id -> name and dotted overrides
      mfl: {name: MFL, set: {network.cfe: false, network.cff: false}}
    grid:                     # and/or a cartesian product of values
      id: "ct{network.ct_convs}_mr{network.mr_convs}"
      name: "CT{network.ct_convs}MR{network.mr_convs}"
      axes: {network.ct_convs: [3, 4, 5, 6], network.mr_convs: [3, 4, 5, 6]}

A variant's method id is ``<file stem>.<variant id>`` (``table5.ct3_mr4``).

A variant file may also list *heads*: overrides of a plugin's inference-only params (its
``inference_params``) that read another output of the same trained model, so each head is a
row of its own without retraining (Table V reports y_ct and y_mr of one model)::

    heads:
      ct: {name: "{name} y_ct", set: {params.output: ct}}

Such rows have ids ``<file stem>.<variant id>@<head>``; the model is trained once per variant.
"""

from __future__ import annotations

import collections.abc
import copy
import importlib
import importlib.util
import inspect
import itertools
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import yaml
from torch import nn

from cmfnet.errors import InputError
from cmfnet.networks import build_network, network_constructor

if TYPE_CHECKING:
    from cmfnet.engine import Trainer

CARD_KEYS = {"name", "plugin", "supervision", "scribble_variant", "fusion", "network", "channels",
             "params", "train", "description", "paper", "table"}
VARIANT_FILE_KEYS = {"extends", "table", "variants", "grid", "heads", "description"}


# -- value checks shared by cards, params, network options and the train block ----------------

def matches_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as YAML gives it) fits a type hint; an int fits float, a bool fits no number."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, arg) for arg in typing.get_args(hint))
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (not args or all(matches_type(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def describe_type(hint: Any) -> str:
    """``int | None`` -> "an int or null": the words a message uses for a hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(hint))
    if hint is None or hint is type(None):
        return "null"
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        args = typing.get_args(hint)
        return f"a list of {describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    names = {bool: "true or false", int: "an int", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def counted(n: int, noun: str) -> str:
    """``counted(1, "volume")`` -> "1 volume", ``counted(3, "volume")`` -> "3 volumes"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_value(source: object, name: str, value: Any, hint: Any) -> None:
    """Raise one :class:`InputError` line when ``value`` does not fit ``hint``."""
    if matches_type(value, hint):
        return
    problem = f"{name}={value!r}: expected {describe_type(hint)}"
    if isinstance(value, str) and matches_type(0.5, hint):
        try:
            float(value)
            problem += " (YAML reads a number like 1e-3 as text: write 1.0e-3)"
        except ValueError:
            pass
    raise InputError(source, problem)


def check_range(source: object, name: str, value: Any, ok: bool, rule: str) -> None:
    """Raise one :class:`InputError` line when a typed ``value`` is outside its range."""
    if not ok:
        raise InputError(source, f"{name}={value!r}: must be {rule}")


# network options the constructors take but whose range a type cannot say
_NETWORK_RANGES: dict[str, tuple[collections.abc.Callable[[Any], bool], str]] = {
    "width": (lambda v: v >= 1, ">= 1"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "downsamplings": (lambda v: v >= 1, ">= 1"),
    "ct_downsamplings": (lambda v: v is None or v >= 1, ">= 1"),
    "mr_downsamplings": (lambda v: v is None or v >= 1, ">= 1"),
    "n_convs": (lambda v: min(v) >= 1 if isinstance(v, (list, tuple)) else v >= 1, ">= 1 per stage"),
    "ct_convs": (lambda v: v >= 1, ">= 1"),
    "mr_convs": (lambda v: v >= 1, ">= 1"),
    "mm_convs": (lambda v: v >= 1, ">= 1"),
    "norm": (lambda v: v in ("batch", "instance", "group", "none"), "batch, instance, group or none"),
    "act": (lambda v: v in ("relu", "prelu"), "relu or prelu"),
}


def check_network_options(source: object, network: dict[str, Any]) -> None:
    """A card's ``network`` block against its constructor: known names, their types, their ranges."""
    arch = network.get("arch", "vnet")
    try:
        constructor = network_constructor(arch)
    except ValueError as err:
        raise InputError(source, f"network.arch: {err}") from None
    hints = typing.get_type_hints(constructor.__init__)
    accepted = [p for p in inspect.signature(constructor).parameters if p not in ("in_channels", "num_classes")]
    for name, value in network.items():
        if name == "arch":
            continue
        if name not in accepted:
            raise InputError(source, f"network.{name}: not an option of network '{arch}'; "
                                     f"it takes {', '.join(accepted)}")
        check_value(source, f"network.{name}", value, hints.get(name, Any))
        if name in _NETWORK_RANGES:
            rule, words = _NETWORK_RANGES[name]
            check_range(source, f"network.{name}", value, rule(value), words)


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


@dataclass
class Card:
    """A parsed method card."""

    path: Path
    name: str
    plugin: str
    supervision: str = "scribble"
    scribble_variant: str = "sim"
    fusion: str = "input"
    network: dict[str, Any] = field(default_factory=lambda: {"arch": "vnet"})
    channels: list[int] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None
    head: str | None = None
    table: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The method id used in paths: the card's file stem, plus ``.variant`` for a variant."""
        base = f"{self.path.stem}.{self.variant}" if self.variant else self.path.stem
        return f"{base}@{self.head}" if self.head else base

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "plugin": self.plugin,
                "supervision": self.supervision, "scribble_variant": self.scribble_variant,
                "fusion": self.fusion, "network": self.network, "channels": self.channels,
                "params": self.params, "train": self.train, "table": self.table}

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> Card:
        """The inverse of :meth:`to_dict` (how ``model.pt`` stores its card)."""
        fields = ("name", "plugin", "supervision", "scribble_variant", "fusion", "network", "channels",
                  "params", "train", "table")
        return cls(path=Path(path), **{key: data.get(key) for key in fields})


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "train.iterations", 3)`` sets ``d["train"]["iterations"] = 3``."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set '{key}': '{part}' is not a mapping")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` with a YAML value (``train.iterations=3``, ``params.weight=0.1``)."""
    if "=" not in text:
        raise ValueError(f"override '{text}' is not of the form key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "method card not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(path, f"invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise InputError(path, "a method card must be a mapping")
    return raw


def _format_dotted(template: str, values: dict[str, Any]) -> str:
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", str(value))
    return out


def variant_overrides(path: str | Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """The variants a variant file declares: ``id -> (table name, dotted overrides)``."""
    path = Path(path)
    raw = _read_yaml(path)
    unknown = set(raw) - VARIANT_FILE_KEYS
    if unknown:
        raise InputError(path, f"unknown variant-file keys {sorted(unknown)}")
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for vid, spec in (raw.get("variants") or {}).items():
        spec = spec or {}
        out[str(vid)] = (str(spec.get("name", vid)), dict(spec.get("set") or {}))
    grid = raw.get("grid")
    if grid:
        axes = grid.get("axes") or {}
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            values = dict(zip(keys, combo))
            vid = _format_dotted(grid.get("id", "_".join(f"{{{k}}}" for k in keys)), values)
            if vid in out:
                raise InputError(path, f"variant '{vid}' declared twice")
            out[vid] = (_format_dotted(grid.get("name", vid), values), {**(grid.get("set") or {}), **values})
    if not out:
        raise InputError(path, "a variant file needs 'variants' or 'grid'")
    return out


def is_variant_file(path: str | Path) -> bool:
    return "extends" in _read_yaml(Path(path))


def head_overrides(path: str | Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """The heads a variant file declares: ``head -> (name template, dotted overrides)``."""
    heads = _read_yaml(Path(path)).get("heads") or {}
    return {str(h): (str((spec or {}).get("name", "{name} " + str(h))), dict((spec or {}).get("set") or {}))
            for h, spec in heads.items()}


def method_ids(path: str | Path) -> list[str]:
    """Every table row a card file stands for: its stem, ``stem.variant``, or ``stem.variant@head``."""
    path = Path(path)
    if not is_variant_file(path):
        return [path.stem]
    heads = head_overrides(path)
    return [f"{path.stem}.{vid}" + (f"@{head}" if head else "")
            for vid in variant_overrides(path) for head in (heads or [None])]


def training_id(method_id: str) -> str:
    """The trained model a row reads: heads of one variant share it."""
    return method_id.partition("@")[0]


def card_path_for_id(methods_dir: str | Path, method_id: str) -> tuple[Path, str | None, str | None]:
    """``table5.ct3_mr4@ct`` -> (methods/table5.yaml, "ct3_mr4", "ct"); ``pce`` -> (methods/pce.yaml, None, None)."""
    base, _, head = method_id.partition("@")
    stem, _, variant = base.partition(".")
    return Path(methods_dir) / f"{stem}.yaml", (variant or None), (head or None)


def load_card(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
              variant: str | None = None, head: str | None = None) -> Card:
    """Read and check a method card (or one variant of a variant file), then apply ``key=value`` overrides."""
    path = Path(path)
    raw = _read_yaml(path)
    table = None
    name_override = None
    if "extends" in raw:
        variants = variant_overrides(path)
        if variant is None or variant not in variants:
            raise InputError(path, f"choose a variant with --variant; one of {sorted(variants)}")
        name_override, settings = variants[variant]
        table = raw.get("table")
        base = (path.parent / str(raw["extends"])).resolve()
        raw = copy.deepcopy(_read_yaml(base))
        for key, value in settings.items():
            set_dotted(raw, key, value)
        raw["name"] = name_override
        if head is not None:
            heads = head_overrides(path)
            if head not in heads:
                raise InputError(path, f"no head '{head}'; one of {sorted(heads)}")
            template, head_settings = heads[head]
            for key, value in head_settings.items():
                set_dotted(raw, key, value)
            raw["name"] = template.replace("{name}", str(name_override))
    elif variant is not None or head is not None:
        raise InputError(path, f"not a variant file, so it has no variant '{variant}' or head '{head}'")
    for text in overrides:
        try:
            key, value = parse_override(text)
            set_dotted(raw, key, value)
        except ValueError as err:
            raise InputError(path, str(err)) from None
    unknown = set(raw) - CARD_KEYS
    if unknown:
        raise InputError(path, f"unknown card keys {sorted(unknown)}")
    for key in ("name", "plugin"):
        if key not in raw:
            raise InputError(path, f"missing '{key}'")
    if raw.get("supervision", "scribble") not in ("scribble", "mask"):
        raise InputError(path, "supervision must be 'scribble' or 'mask'")
    if raw.get("fusion", "input") not in ("input", "cross-modal"):
        raise InputError(path, "fusion must be 'input' or 'cross-modal'")
    for key in ("network", "params", "train"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise InputError(path, f"{key} must be a mapping, got {raw[key]!r}")
    for key in ("name", "plugin", "scribble_variant"):
        if key in raw:
            check_value(path, key, raw[key], str)
    channels = raw.get("channels")
    check_value(path, "channels", channels, list[int] | None)
    if channels is not None and (not channels or min(channels) < 0 or len(set(channels)) != len(channels)):
        raise InputError(path, f"channels={channels!r}: must be distinct channel indices >= 0, e.g. [0, 1]")
    return Card(path=path, name=str(raw["name"]), plugin=str(raw["plugin"]),
                supervision=raw.get("supervision", "scribble"),
                scribble_variant=raw.get("scribble_variant", "sim"),
                fusion=raw.get("fusion", "input"),
                network=dict(raw.get("network") or {"arch": "vnet"}),
                channels=list(channels) if channels is not None else None,
                params=dict(raw.get("params") or {}), train=dict(raw.get("train") or {}),
                variant=variant, head=head, table=table or raw.get("table"), raw=raw)


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
