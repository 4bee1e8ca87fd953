"""Network registry: one constructor per architecture, selected by name from a method card.

``build_network({"arch": "vnet", "width": 16, ...}, in_channels=2, num_classes=2)`` calls the
class registered as ``vnet`` with the remaining keys as keyword arguments. Classes are registered
(not factory functions) so that a card's options can be checked against the constructor's
signature and type hints before anything is built (:func:`cmfnet.training.cards.check_network_options`).
"""

from __future__ import annotations

from cmfnet.training.networks.registry import available, build_network, count_parameters, network_constructor, register

# Importing the modules registers their constructors.
from cmfnet.training.networks import cmfnet, monai_nets, vnet  # noqa: E402,F401

__all__ = ["available", "build_network", "count_parameters", "network_constructor", "register"]
