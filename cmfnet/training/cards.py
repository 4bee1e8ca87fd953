"""Method cards (``methods/*.yaml``): reading, checking and expanding them into method ids.

A card names a plugin (:mod:`cmfnet.training.contract`) and sets its options. It lists only what differs
from the defaults: the plugin's ``defaults`` for ``params``, the engine's and the preset's for
``train``::

    name: pCE                 # the row label in tables
    plugin: baselines.pce     # dotted module, or a path to a .py file relative to the card
    supervision: scribble     # scribble | mask | semi (a labelled fraction of masks, docs/semi-supervised.md)
    scribble_variant: sim     # which scribblesTr/<variant> to train on
    network: {arch: vnet, width: 16, dropout: 0.5}
    channels: null            # input channels fed to the network (null: all; [0]: CT only)
    params: {}                # the plugin's own hyper-parameters (over its ``defaults``)
    train: {}                 # overrides of the preset's training block, if the method needs them
    description: ...          # documentation only (also ``paper``): read by people, not the suite

Any card may start from another one and list only what it changes::

    extends: cmfnet.yaml      # relative to this file; followed recursively
    name: CmFNet (AutoBG)
    scribble_variant: autobg  # keys replace the base's; network/params/train merge key by key

Ablations and sweeps are *variant files*: overrides of one base card, expanded by the pipeline,
never hand-copied cards. A file with ``variants`` or ``grid`` is a variant file::

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
import dataclasses
import inspect
import itertools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cmfnet.errors import InputError
from cmfnet.training.row_ids import split_row_id
from cmfnet.training.networks import network_constructor

#: keys a card may carry for people (what the method is, which paper row): accepted, never stored
DOC_KEYS = frozenset({"description", "paper"})
VARIANT_FILE_KEYS = frozenset({"extends", "table", "variants", "grid", "heads", "description"})


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
    "aux_feature_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "downsamplings": (lambda v: v >= 1, ">= 1"),
    "ct_downsamplings": (lambda v: v is None or v >= 1, ">= 1"),
    "mr_downsamplings": (lambda v: v is None or v >= 1, ">= 1"),
    "n_convs": (lambda v: min(v) >= 1 if isinstance(v, (list, tuple)) else v >= 1, ">= 1 per stage"),
    "ct_convs": (lambda v: v >= 1, ">= 1"),
    "mr_convs": (lambda v: v >= 1, ">= 1"),
    "mm_convs": (lambda v: v >= 1, ">= 1"),
    "num_res_units": (lambda v: v >= 0, ">= 0"),
    "blocks_down": (lambda v: len(v) >= 1 and min(v) >= 1, ">= 1 per level"),
    "blocks_up": (lambda v: not v or min(v) >= 1, ">= 1 per level"),
    "hidden_size": (lambda v: v >= 1, ">= 1"),
    "num_heads": (lambda v: v >= 1, ">= 1"),
    "mlp_dim": (lambda v: v >= 1, ">= 1"),
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
class Card:
    """A parsed method card. Its fields are the card's keys, in the order ``to_dict`` writes them;
    a field with ``metadata={"card_key": False}`` comes from the file name or the caller instead."""

    path: Path = field(metadata={"card_key": False})
    name: str
    plugin: str
    supervision: Literal["scribble", "mask", "semi"] = "scribble"
    scribble_variant: str = "sim"
    network: dict[str, Any] = field(default_factory=lambda: {"arch": "vnet"})
    channels: list[int] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    table: str | None = None
    variant: str | None = field(default=None, metadata={"card_key": False})
    head: str | None = field(default=None, metadata={"card_key": False})

    @property
    def id(self) -> str:
        """The method id used in paths: the card's file stem, plus ``.variant`` for a variant."""
        base = f"{self.path.stem}.{self.variant}" if self.variant else self.path.stem
        return f"{base}@{self.head}" if self.head else base

    def to_dict(self) -> dict[str, Any]:
        """The id and every card key (how ``model.pt`` stores its card)."""
        return {"id": self.id, **{key: getattr(self, key) for key in CARD_KEYS}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> Card:
        """The inverse of :meth:`to_dict`; keys that are no card key (``id``, or a field an older
        version stored) are ignored."""
        return cls(path=Path(path), **{key: data[key] for key in CARD_KEYS if key in data})


#: the keys a card file may set: the :class:`Card` fields the file itself gives
CARD_KEYS = tuple(f.name for f in dataclasses.fields(Card) if f.metadata.get("card_key", True))


def _check_card_key(path: Path, key: str, value: Any, hint: Any) -> None:
    """One card key against its field's type: a mapping, one of fixed choices, or any other type."""
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise InputError(path, f"{key} must be a mapping, got {value!r}")
    elif typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise InputError(path, f"{key} must be " + " or ".join(repr(c) for c in typing.get_args(hint)))
    else:
        check_value(path, key, value, hint)


def card_from_mapping(path: Path, raw: dict[str, Any], variant: str | None = None,
                      head: str | None = None, table: str | None = None) -> Card:
    """Check a resolved card mapping key by key against the :class:`Card` fields, and build it.

    A null value, or an empty mapping, stands for the field's default (``network: {}`` is the
    default network).
    """
    unknown = set(raw) - set(CARD_KEYS) - DOC_KEYS
    if unknown:
        raise InputError(path, f"unknown card keys {sorted(unknown)}")
    hints = typing.get_type_hints(Card)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Card):
        if not f.metadata.get("card_key", True):
            continue
        if raw.get(f.name) is None or raw[f.name] == {}:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(path, f"missing '{f.name}'")
            continue
        _check_card_key(path, f.name, raw[f.name], hints[f.name])
        values[f.name] = copy.deepcopy(raw[f.name])
    channels = values.get("channels")
    if channels is not None and (not channels or min(channels) < 0 or len(set(channels)) != len(channels)):
        raise InputError(path, f"channels={channels!r}: must be distinct channel indices >= 0, e.g. [0, 1]")
    if table is not None:
        values["table"] = table
    return Card(path=path, variant=variant, head=head, **values)


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


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied: mappings merge key by key, any other value replaces."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def resolved_card(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A plain card's mapping with its ``extends`` chain applied (the base's keys, then its own).

    A ``.py`` plugin inherited from a base in another folder is rewritten relative to this card,
    so it still names the same file.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise InputError(path, f"extends itself through {' -> '.join(p.name for p in (*_seen, path))}")
    raw = _read_yaml(path)
    if "extends" not in raw:
        return raw
    base_path = (path.parent / str(raw["extends"])).resolve()
    if is_variant_file(base_path):
        raise InputError(path, f"extends {base_path.name}, a variant file; extend a card")
    base = resolved_card(base_path, (*_seen, path))
    plugin = base.get("plugin")
    if isinstance(plugin, str) and plugin.endswith(".py") and base_path.parent != path.parent:
        base["plugin"] = os.path.relpath(base_path.parent / plugin, path.parent)
    return _merged(base, {key: value for key, value in raw.items() if key != "extends"})


def _format_dotted(template: str, values: dict[str, Any]) -> str:
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", str(value))
    return out


def is_variant_file(path: str | Path) -> bool:
    """A variant file declares ``variants`` or a ``grid``; a card that only ``extends`` is a card."""
    raw = _read_yaml(Path(path))
    return "variants" in raw or "grid" in raw


def variant_overrides(path: str | Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """The variants a variant file declares: ``id -> (table name, dotted overrides)``."""
    path = Path(path)
    raw = _read_yaml(path)
    unknown = set(raw) - VARIANT_FILE_KEYS
    if unknown:
        raise InputError(path, f"unknown variant-file keys {sorted(unknown)}")
    if "extends" not in raw:
        raise InputError(path, "a variant file needs 'extends' (its base card)")
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


def card_path_for_id(methods_dir: str | Path, method_id: str) -> tuple[Path, str | None, str | None]:
    """``table5.ct3_mr4@ct`` -> (methods/table5.yaml, "ct3_mr4", "ct"); ``pce`` -> (methods/pce.yaml, None, None)."""
    base, head = split_row_id(method_id)
    stem, _, variant = base.partition(".")
    return Path(methods_dir) / f"{stem}.yaml", (variant or None), (head or None)


def load_card(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
              variant: str | None = None, head: str | None = None) -> Card:
    """Read and check a method card (or one variant of a variant file), then apply ``key=value`` overrides."""
    path = Path(path)
    table = None
    if is_variant_file(path):
        variants = variant_overrides(path)
        if variant is None or variant not in variants:
            raise InputError(path, f"choose a variant with --variant; one of {sorted(variants)}")
        name_override, settings = variants[variant]
        raw_file = _read_yaml(path)
        table = raw_file.get("table")
        raw = resolved_card((path.parent / str(raw_file["extends"])).resolve())
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
    else:
        raw = resolved_card(path)
    for text in overrides:
        try:
            key, value = parse_override(text)
            set_dotted(raw, key, value)
        except ValueError as err:
            raise InputError(path, str(err)) from None
    return card_from_mapping(path, raw, variant, head, table)
