"""The registry of network constructors: one class per architecture name (see the package docstring)."""

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
