"""What produced a trained model and a results row, so the pipeline reruns exactly that.

The Snakemake workflow (``workflow/rules/common.smk``) passes these values to its rules:

- a model depends on its *training settings*: the protocol version, the method's resolved card
  (its ``extends`` chain, or a variant file's base card with the variant's overrides applied,
  then the preset's ``network:`` block, :func:`network_overrides`), with the plugin's params as
  the plugin resolves them (its ``defaults`` under the card's ``params``: a card that spells out
  a default trains the same model as one that leaves it out), and the resolved training
  block (engine defaults < the preset's ``train:`` < the card's ``train:``), plus, as file inputs,
  the plugin's source and the plugin-package modules it imports (:func:`plugin_sources`);
- a row (one metrics CSV) depends on the same, plus the dataset block of the config, the head it
  predicts with, the fold, the scribble seed and the prediction settings, and on nothing else in
  the config: adding a method or an ablation changes no other row (:func:`row_hash`).

A row's label (its id, ``name`` and ``table``) is not a setting: a sweep point whose settings
equal its base card's reads the base card's model (:func:`trained_as`) instead of training the
same thing twice. Code under ``cmfnet/`` is the shared protocol: editing it is a protocol change,
made explicit by bumping ``protocol_version`` in the config.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import yaml

from cmfnet.training.config import resolve_train_config
from cmfnet.errors import InputError
from cmfnet.training.cards import Card, card_path_for_id, load_card, variant_overrides
from cmfnet.training.row_ids import training_id
from cmfnet.training.plugins import load_method

#: a row's labels: they name a row and never change what it trains or predicts
LABEL_KEYS = frozenset({"id", "name", "table"})
#: the package of the shared protocol: its modules are never a plugin's own inputs
SHARED_PACKAGE = "cmfnet"


def digest(data: Any) -> str:
    """A short, stable hash of plain data (key order does not matter)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def training_settings(card: Card, preset_train: dict[str, Any], protocol_version: int) -> dict[str, Any]:
    """Everything a model's weights depend on besides the data and the plugin's code."""
    method = load_method(card)
    # training_card: without the network block of a method that ignores it (an external framework's)
    settings = {key: value for key, value in method.training_card().items() if key not in LABEL_KEYS | {"train"}}
    settings["params"] = method.params
    settings["train"] = resolve_train_config(card, preset_train).settings()
    return {"protocol_version": protocol_version, "card": settings}


def network_overrides(preset_network: dict[str, Any]) -> list[str]:
    """The preset's ``network:`` block (``{width: 8}``) as card overrides (``network.width=8``):
    applied to every card, after its own network, by the pipeline and by ``cmfnet train --set``."""
    return [f"network.{key}={json.dumps(value)}" for key, value in sorted(preset_network.items())]


def row_hash(card: Card, preset_train: dict[str, Any], protocol_version: int, *, dataset: dict[str, Any],
             fold: int | str, scribble_seed: int, predict: dict[str, Any]) -> str:
    """The provenance of one metrics row: what produced it, and none of the other rows."""
    return digest({**training_settings(card, preset_train, protocol_version), "dataset": dataset,
                   "fold": int(fold), "scribble_seed": scribble_seed, "predict": predict})


def _module_file(name: str, card_path: Path) -> Path:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as err:
        raise InputError(card_path, f"cannot find plugin '{name}' ({err})") from None
    if spec is None or not spec.origin or not spec.has_location:
        raise InputError(card_path, f"cannot find plugin '{name}'")
    return Path(spec.origin)


def _package_imports(file: Path, package: str) -> list[str]:
    """Modules of ``package`` that ``file`` imports (``from baselines.regularizers import ...``)."""
    tree = ast.parse(file.read_text(), filename=str(file))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [name for name in names if name.split(".")[0] == package]


def plugin_sources(card: Card) -> list[Path]:
    """The plugin's source file, and the modules of its own package that it imports.

    ``baselines.em`` gives ``baselines/em.py`` and ``baselines/regularizers.py``; a ``.py``
    plugin next to a card gives that file. Modules of the shared ``cmfnet`` package are never
    listed (``baselines.cmfnet`` gives only ``baselines/cmfnet.py``): they are the protocol.
    """
    if card.plugin.endswith(".py"):
        file = (card.path.parent / card.plugin).resolve()
        if not file.is_file():
            raise InputError(card.path, f"plugin file {file} not found")
        return [file]
    package = card.plugin.split(".")[0]
    files = [_module_file(card.plugin, card.path)]
    todo = [] if package == SHARED_PACKAGE else _package_imports(files[0], package)
    while todo:
        file = _module_file(todo.pop(), card.path)
        if file not in files:
            files.append(file)
            todo += _package_imports(file, package)
    return files


def workdir_relative(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it (readable, and the same
    in a copy of the working directory), else absolute."""
    resolved, here = path.resolve(), Path.cwd().resolve()
    return os.path.relpath(resolved, here) if resolved.is_relative_to(here) else str(resolved)


def trained_as(methods_dir: str | Path, method_id: str, preset_train: dict[str, Any],
               protocol_version: int, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The method id whose model a row reads: its own training id, unless it is a variant whose
    training settings equal its base card's (``fig6_alpha.alpha0p8`` reads ``cmfnet``) or an
    earlier variant's of the same file. The answer depends on the card files (and the preset's
    card ``overrides``) only, never on which other methods the config lists, so a model's folder
    never moves."""
    own_id = training_id(method_id)
    path, variant, _ = card_path_for_id(methods_dir, own_id)
    if variant is None:
        return own_id

    def settings(card: Card) -> dict[str, Any]:
        return training_settings(card, preset_train, protocol_version)

    own = settings(load_card(path, overrides, variant=variant))
    base = (path.parent / str(yaml.safe_load(path.read_text())["extends"])).resolve()
    if base.parent == Path(methods_dir).resolve() and settings(load_card(base, overrides)) == own:
        return base.stem
    for earlier in variant_overrides(path):
        if earlier == variant:
            break
        if settings(load_card(path, overrides, variant=earlier)) == own:
            return f"{path.stem}.{earlier}"
    return own_id

