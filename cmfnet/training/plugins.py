"""Finding a card's plugin: a module of ``baselines/`` (or any importable module), or a ``.py`` file
beside the card, that defines exactly one :class:`~cmfnet.training.contract.Method` subclass."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

from cmfnet.errors import InputError
from cmfnet.training.cards import Card
from cmfnet.training.contract import Method


def _import_plugin_module(spec: str, card_path: Path) -> ModuleType:
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

