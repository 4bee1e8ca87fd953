"""Stage 2 of the flow: method cards and plugins, networks, losses and the one training engine.

May import :mod:`cmfnet.data`; never :mod:`cmfnet.evaluation` (see docs/architecture.md).
"""
