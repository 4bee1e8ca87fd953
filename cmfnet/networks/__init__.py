"""Network registry: one constructor per architecture, selected by name from a method card.

``build_network({"arch": "vnet", "width": 16, ...}, in_channels=2, num_classes=2)`` calls the
constructor registered as ``vnet`` with the remaining keys as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"network '{name}' registered twice")
        _REGISTRY[name] = constructor
        return constructor
    return decorator


def available() -> list[str]:
    return sorted(_REGISTRY)


def build_network(config: dict[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    options = dict(config)
    arch = options.pop("arch", "vnet")
    if arch not in _REGISTRY:
        raise ValueError(f"unknown network '{arch}'; available: {', '.join(available())}")
    return _REGISTRY[arch](in_channels=in_channels, num_classes=num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Importing the modules registers their constructors.
from cmfnet.networks import vnet  # noqa: E402,F401
from cmfnet.networks import cmfnet  # noqa: E402,F401
