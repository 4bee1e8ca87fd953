"""Stage 1 of the flow: datasets on disk, their checks, synthetic phantoms, importers and scribbles.

Imports nothing from :mod:`cmfnet.training` or :mod:`cmfnet.evaluation` (see docs/architecture.md).
"""
