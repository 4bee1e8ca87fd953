"""Network registry: one constructor per architecture, selected by name from a method card.

``build_network({"arch": "vnet", "width": 16, ...}, in_channels=2, num_classes=2)`` calls the
class registered as ``vnet`` with the remaining keys as keyword arguments. Classes are registered
(not factory functions) so that a card's options can be checked against the constructor's
signature and type hints before anything is built (:func:`cmfnet.method.check_network_options`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}

NetworkClass = TypeVar("NetworkClass", bound=type[nn.Module])


def register(name: str) -> Callable[[NetworkClass], NetworkClass]:
    def decorator(constructor: NetworkClass) -> NetworkClass:
        if name in _REGISTRY:
            raise ValueError(f"network '{name}' registered twice")
        _REGISTRY[name] = constructor
        return constructor
    return decorator


def available() -> list[str]:
    return sorted(_REGISTRY)


def network_constructor(arch: object) -> type[nn.Module]:
    """The class registered as ``arch``; ValueError naming the choices for an unknown one."""
    if not isinstance(arch, str) or arch not in _REGISTRY:
        raise ValueError(f"unknown network {arch!r}; available: {', '.join(available())}")
    return _REGISTRY[arch]


def build_network(config: dict[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    options = dict(config)
    constructor = network_constructor(options.pop("arch", "vnet"))
    return constructor(in_channels=in_channels, num_classes=num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Importing the modules registers their constructors.
from cmfnet.networks import vnet  # noqa: E402,F401
from cmfnet.networks import cmfnet  # noqa: E402,F401
